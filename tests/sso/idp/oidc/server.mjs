// A real OpenID provider (panva/oidc-provider) for the SSO tests.
// Usage: node server.mjs <config.json>
//   config: {port, issuer, clients: [...], accounts_file, rogue_audience_client}
// Accounts are read from accounts_file on every sign-in, so tests add people while it runs.
// Dev interactions provide the login and consent forms (login = account id, any password).
// `rogue_audience_client` plays a misbehaving provider: id_tokens for that client are re-signed with
// the provider's real key but another audience, so the relying party's own audience check is tested.
import fs from 'node:fs';
import Provider from 'oidc-provider';
import { decodeJwt, exportJWK, generateKeyPair, SignJWT } from 'jose';

const conf = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: 'eduaiq-test-1', alg: 'RS256', use: 'sig' };

const accounts = () => JSON.parse(fs.readFileSync(conf.accounts_file, 'utf8'));

const provider = new Provider(conf.issuer, {
  clients: conf.clients,
  jwks: { keys: [jwk] },
  cookies: { keys: ['eduaiq-test-cookie-key'] },
  scopes: ['openid', 'email', 'profile', 'eduperson'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    eduperson: [
      'eduperson_principal_name',
      'eduperson_affiliation',
      'eduperson_scoped_affiliation',
      'eduperson_entitlement',
      'groups',
    ],
  },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  async findAccount(ctx, id) {
    const account = accounts()[id];
    if (!account) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...account }; } };
  },
});

provider.use(async (ctx, next) => {
  await next();
  const body = ctx.body;
  if (ctx.path === '/token' && ctx.status === 200 && body && body.id_token
      && ctx.oidc?.client?.clientId === conf.rogue_audience_client) {
    const payload = decodeJwt(body.id_token);
    payload.aud = 'someone-else';
    body.id_token = await new SignJWT(payload)
      .setProtectedHeader({ alg: 'RS256', kid: jwk.kid, typ: 'JWT' })
      .sign(privateKey);
  }
});

provider.listen(conf.port, '127.0.0.1', () => console.log(`oidc-provider ${conf.issuer} ready`));
