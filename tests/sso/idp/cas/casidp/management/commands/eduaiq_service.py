"""Register the service under test: `manage.py eduaiq_service '<regex>'`, releasing every attribute."""

from cas_server.models import ReplaceAttributName, ServicePattern
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Allow services matching a pattern and release all attributes to them."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("pattern")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        pattern, _ = ServicePattern.objects.get_or_create(
            pattern=options["pattern"], defaults={"name": "eduaiq"}
        )
        ReplaceAttributName.objects.get_or_create(name="*", replace="", service_pattern=pattern)
