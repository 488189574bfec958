"""The ``captum-rap`` command line (``python -m captum_rap``), in layers:

``common``  -- constants, :class:`~captum_rap.cli.common.CLIError`, ``--method`` and
               ``--target`` parsing (also used by :mod:`captum_rap.quantus`), the demo's
               settings, progress bar and timings;
``loading`` -- models (EfficientNet-Lite0, ``torchvision:NAME``, ``--weights``) and images
               (the preprocessing itself is in :mod:`captum_rap.zoo`);
``report``  -- the demo's self-contained HTML report (the figures are in
               :mod:`captum_rap.visualization`);
``explain`` -- ``captum-rap explain``;
``demo``    -- ``captum-rap demo``;
``main``    -- the argument parser, ``captum-rap insights`` and :func:`~captum_rap.cli.main.main`.

Each module imports only the ones listed above it.  ``python -m captum_rap`` and the
``captum-rap`` script both call :func:`captum_rap.cli.main.main`.
"""
