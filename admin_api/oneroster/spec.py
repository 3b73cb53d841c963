"""What OneRoster 1.2 CSV says about the files this import reads: their columns, which are required, the
manifest's properties, and the values of `file.*` (bulk: the whole set; delta: changes; absent).

Columns are the 1.2 CSV binding's; `users.csv` also accepts 1.1's `orgSourcedIds` and `role` (many SIS
exports still write them). Columns named `metadata.*` are extensions and always allowed. A header naming
any other column is a problem: a misspelt `emial` must not pass as an empty e-mail.
"""

from __future__ import annotations

from dataclasses import dataclass

MANIFEST = "manifest.csv"
MODES = ("bulk", "delta", "absent")
VERSIONS = ("1.2",)


@dataclass(frozen=True)
class FileSpec:
    name: str  # e.g. "users.csv"
    kind: str  # the record kind it holds (RosterRecord.kind)
    columns: tuple[str, ...]  # every column the spec defines, in its order
    required: tuple[str, ...]  # columns the header must have
    values: tuple[str, ...]  # columns whose value every active row must give

    @property
    def manifest_key(self) -> str:
        return "file." + self.name.removesuffix(".csv")


_COMMON = ("sourcedId", "status", "dateLastModified")

FILES: tuple[FileSpec, ...] = (
    FileSpec("orgs.csv", "org", (*_COMMON, "name", "type", "identifier", "parentSourcedId"),
             (*_COMMON, "name", "type"), ("name", "type")),
    FileSpec("academicSessions.csv", "session",
             (*_COMMON, "title", "type", "startDate", "endDate", "parentSourcedId", "schoolYear"),
             (*_COMMON, "title", "type", "startDate", "endDate"), ("title", "type", "startDate", "endDate")),
    FileSpec("courses.csv", "course",
             (*_COMMON, "schoolYearSourcedId", "title", "courseCode", "grades", "orgSourcedId", "subjects",
              "subjectCodes"),
             (*_COMMON, "title", "orgSourcedId"), ("title", "orgSourcedId")),
    FileSpec("classes.csv", "class",
             (*_COMMON, "title", "grades", "courseSourcedId", "classCode", "classType", "location",
              "schoolSourcedId", "termSourcedIds", "subjects", "subjectCodes", "periods"),
             (*_COMMON, "title", "courseSourcedId", "classType", "schoolSourcedId", "termSourcedIds"),
             ("title", "courseSourcedId", "schoolSourcedId", "termSourcedIds")),
    FileSpec("users.csv", "user",
             (*_COMMON, "enabledUser", "username", "userIds", "givenName", "familyName", "middleName",
              "identifier", "email", "sms", "phone", "agentSourcedIds", "grades", "password",
              "userMasterIdentifier", "resourceSourcedIds", "preferredGivenName", "preferredMiddleName",
              "preferredFamilyName", "primaryOrgSourcedId", "pronouns", "orgSourcedIds", "role"),
             (*_COMMON, "enabledUser", "givenName", "familyName"), ("enabledUser", "givenName", "familyName")),
    FileSpec("enrollments.csv", "enrollment",
             (*_COMMON, "classSourcedId", "schoolSourcedId", "userSourcedId", "role", "primary", "beginDate",
              "endDate"),
             (*_COMMON, "classSourcedId", "schoolSourcedId", "userSourcedId", "role"),
             ("classSourcedId", "schoolSourcedId", "userSourcedId", "role")),
)  # fmt: skip
BY_NAME = {f.name: f for f in FILES}
BY_KIND = {f.kind: f for f in FILES}

# Enrollment roles: what each becomes in EduAiQ. Roles OneRoster defines with no EduAiQ counterpart are
# skipped (counted in the report); any other value is a problem.
ROLE_MAP = {"student": "student", "teacher": "instructor", "aide": "ta"}
IGNORED_ROLES = frozenset({"administrator", "proctor"})
ROLE_RANK = {"instructor": 0, "ta": 1, "student": 2}  # one person enrolled twice in a class: the first wins
SESSION_TYPES = frozenset({"gradingPeriod", "semester", "schoolYear", "term"})
