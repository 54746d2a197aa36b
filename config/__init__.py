"""Settings and the files a bureau may edit without code (forms, calendar)."""

from config.settings import Secret, Settings, load_settings

__all__ = ["Secret", "Settings", "load_settings"]
