// A throwaway OpenID provider for jitsudo's end-to-end tests.
//
//   node provider.mjs PORT        (or PORT=... node provider.mjs)
//
// Serves http://127.0.0.1:PORT with the device authorization grant, the
// built-in development login page (any login name, any password), and JWT
// access tokens for the resource `urn:jitsudo:api` (aud "jitsudo").
// Prints one line `READY <issuer>` on stdout once it listens.
// Env: ACCESS_TTL = access token lifetime in seconds (default 5, so tests can
// exercise the refresh path quickly).
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const port = Number(process.argv[2] || process.env.PORT);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node provider.mjs PORT');
  process.exit(2);
}
const host = '127.0.0.1';
const issuer = `http://${host}:${port}`;
const accessTokenTTL = Number(process.env.ACCESS_TTL || 5);

const CLIENT_ID = 'jitsudo-cli';
const RESOURCE = 'urn:jitsudo:api';
const GROUPS = { alice: ['engineering'], bob: ['approvers', 'engineering'] };

// A fresh signing key per run, so no development keys are used.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: [{
    client_id: CLIENT_ID,
    token_endpoint_auth_method: 'none', // public client: client_id in the body, no secret
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    response_types: [],
    redirect_uris: [],
  }],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'profile', 'email', 'offline_access', 'api'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },

  // Every login name is an account; the subject is the name typed in.
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, name: sub, email: `${sub}@example.com`, email_verified: true };
      },
    };
  },

  features: {
    deviceFlow: { enabled: true },
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // The CLI sends no `resource` parameter: default every request to the API.
      defaultResource: () => RESOURCE,
      // Keep issuing JWTs for the API at the token endpoint (device_code and
      // refresh_token grants), although `openid` was requested too.
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => {
        if (indicator !== RESOURCE) throw new errors.InvalidTarget();
        return {
          scope: 'api',
          audience: 'jitsudo',
          accessTokenFormat: 'jwt',
          accessTokenTTL,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },

  // Device flow requests keep `offline_access` (no prompt/response_type there);
  // hand out refresh tokens whenever the client may use them.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),

  // Skip the consent page: the only client is first-party, so grant whatever it
  // asked for (OIDC scopes, claims, and the resource's scopes) right away.
  async loadExistingGrant(ctx) {
    const { oidc } = ctx;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    const grant = (grantId && await oidc.provider.Grant.find(grantId))
      || new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
    grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
    grant.addOIDCClaims([...oidc.requestParamClaims]);
    for (const [indicator, server] of Object.entries(oidc.resourceServers)) {
      grant.addResourceScope(indicator, server.scope);
    }
    await grant.save();
    return grant;
  },

  // Claims the jitsudo server authorizes on, added to JWT access tokens.
  async extraTokenClaims(ctx, token) {
    if (token.kind !== 'AccessToken' || !token.accountId) return undefined;
    return {
      groups: GROUPS[token.accountId] ?? [],
      email: `${token.accountId}@example.com`,
      email_verified: true,
    };
  },
});

provider.on('server_error', (ctx, err) => console.error('server_error:', err));

provider.listen(port, host, () => {
  console.log(`READY ${issuer}`);
});
