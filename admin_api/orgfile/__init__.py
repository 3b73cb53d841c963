"""The institution file (docs/spec/org-file.md): parse and check it, apply it as a diff, export it back.

`load_file` turns YAML into a checked `OrgFile` or a list of every problem by its
path; `apply_org` writes only the difference in one transaction; `export_org`
writes the database back as a file that imports with no changes.
"""

from admin_api.orgfile.export import export_org
from admin_api.orgfile.parse import OrgFileError, load_file, parse_document
from admin_api.orgfile.sync import ChangeReport, apply_org

__all__ = ["ChangeReport", "OrgFileError", "apply_org", "export_org", "load_file", "parse_document"]
