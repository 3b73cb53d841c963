"""SCIM 2.0 service provider (RFC 7643/7644) at /scim/v2: an institution's IdP creates, updates and
deprovisions its people and pushes groups that become unit memberships (docs/scim.md).

Kept import-light: the institution file's schema imports `admin_api.scim.config`, so this package's
`__init__` must not pull in the routes."""
