"""Attribution method implementations."""
