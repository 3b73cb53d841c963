// The saml-idp test IdP with eduPerson attributes (urn:oid names, as Shibboleth sends them).
// Usage: node server.js '<JSON runServer options>'  (host, port, cert, key, issuer, acsUrl, sloUrl, audience)
// The sign-in form posts every attribute, so each test chooses who signs in and what they assert.
const { runServer } = require('saml-idp');

const options = JSON.parse(process.argv[2]);

const attribute = (id, displayName, multiValue) => ({ id, optional: true, displayName, description: displayName, multiValue });

const metadata = [
  attribute('urn:oid:1.3.6.1.4.1.5923.1.1.1.6', 'eduPersonPrincipalName', false),
  attribute('urn:oid:0.9.2342.19200300.100.1.3', 'mail', false),
  attribute('urn:oid:2.16.840.1.113730.3.1.241', 'displayName', false),
  attribute('urn:oid:1.3.6.1.4.1.5923.1.1.1.1', 'eduPersonAffiliation', true),
  attribute('urn:oid:1.3.6.1.4.1.5923.1.1.1.9', 'eduPersonScopedAffiliation', true),
  attribute('urn:oid:1.3.6.1.4.1.5923.1.1.1.7', 'eduPersonEntitlement', true),
  attribute('urn:oid:1.3.6.1.4.1.5923.1.5.1.1', 'isMemberOf', true),
];

// Every attribute needs a default: the profile mapper splits multi-valued ones on commas.
const user = { userName: 'nobody@idp.test', nameIdFormat: 'urn:oasis:names:tc:SAML:2.0:nameid-format:persistent' };
for (const entry of metadata) user[entry.id] = '';

runServer({ ...options, config: { user, metadata } });
