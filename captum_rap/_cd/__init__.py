"""Private engine of :class:`captum_rap.CD` and :class:`captum_rap.ACD`.

``tensor``  -- the decomposed tensor (relevant / irrelevant parts) and the per-op rules,
``lstm``    -- contextual decomposition of ``torch.lstm`` (Murdoch et al. rules),
``agglomerate`` -- the ACD agglomeration procedures (images and token sequences).
"""
