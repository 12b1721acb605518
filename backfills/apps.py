from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class BackfillsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "backfills"
    verbose_name = "Backfills"

    def ready(self) -> None:
        # Each app declares its backfills in backfills.py, as admin.py declares its admin:
        # found here, once every app is loaded.
        autodiscover_modules("backfills")
