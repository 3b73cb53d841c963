"""People for the test CAS server, from a JSON file the tests write."""

import json

from cas_server.auth import AuthUser
from django.conf import settings


def _people() -> dict:
    with open(settings.CAS_USERS_FILE, encoding="utf-8") as f:
        return json.load(f)


class JsonFileAuthUser(AuthUser):
    def test_password(self, password: str) -> bool:
        person = _people().get(self.username)
        return bool(person) and password == person.get("password")

    def attributs(self) -> dict:
        person = dict(_people().get(self.username, {}))
        person.pop("password", None)
        return person
