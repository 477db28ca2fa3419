// A real OAuth 2.0 authorization server for the uplink interop test
// (agent/tests/uplink_oidc.rs): oidc-provider with one client-credentials client.
//
//   node server.js <port> <client_id> <client_secret> <scope>
//
// Listens on 127.0.0.1:<port> (plain http on loopback; the agent needs
// allow_plain_http = true for it). Access tokens are opaque, for the resource
// `urn:labagent:ingest` with the given scope; a resource server verifies them at the
// introspection endpoint with the same client's credentials. Everything goes to stderr:
// `listening <port>` when ready, `token issued <n>` for every access token granted
// (the test counts them), `token request auth=basic|post` for every request at the token
// endpoint (how the client authenticated: oidc-provider accepts either for a client
// registered with client_secret_basic), never a secret or a token.
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, clientId, clientSecret, scope] = process.argv.slice(2);
if (!port || !clientId || !clientSecret || !scope) {
  console.error('usage: node server.js <port> <client_id> <client_secret> <scope>');
  process.exit(2);
}
const RESOURCE = 'urn:labagent:ingest';

// A signing key made at start (oidc-provider otherwise uses a published development key).
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test', alg: 'ES256', use: 'sig' };

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope,
  }],
  scopes: scope.split(' '),
  ttl: { ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || 3600 },
  jwks: { keys: [jwk] },
  enabledJWA: { idTokenSigningAlgValues: ['ES256'] },
  id_token_signed_response_alg: 'ES256',
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // Only the client a token was issued to may introspect it (the test's resource
      // server uses that client's credentials).
      allowedPolicy: (ctx, client, token) => token.clientId === client.clientId,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (resource !== RESOURCE) {
          throw new Error(`unknown resource ${resource}`);
        }
        return { scope, audience: RESOURCE, accessTokenTTL: 3600, accessTokenFormat: 'opaque' };
      },
    },
  },
});

provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && ctx.path === '/token') {
    const auth = ctx.get('authorization').toLowerCase().startsWith('basic ') ? 'basic' : 'post';
    console.error(`token request auth=${auth}`);
  }
  await next();
});

let issued = 0;
provider.on('client_credentials.saved', () => {
  issued += 1;
  console.error(`token issued ${issued}`);
});
provider.on('grant.error', (ctx, err) => console.error(`grant error ${err.error || err.message}`));
provider.on('server_error', (ctx, err) => console.error(`server error ${err.message}`));

provider.listen(Number(port), '127.0.0.1', () => {
  console.error(`listening ${port}`);
});
