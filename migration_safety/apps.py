from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class MigrationSafetyConfig(AppConfig):
    name = "migration_safety"
    verbose_name = "Migration safety"

    def ready(self) -> None:
        # Each app declares the rollouts of its columns in rollouts.py, as admin.py declares
        # its admin: found here, once every app is loaded.
        autodiscover_modules("rollouts")
