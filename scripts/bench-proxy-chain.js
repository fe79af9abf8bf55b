// proxy-chain (npm), the Node.js proxy peer of scripts/bench.py: an HTTP proxy (CONNECT and
// forwarding) that asks for Basic authentication, as tollgate does.
//   node scripts/bench-proxy-chain.js PORT USER PASS
const ProxyChain = require('proxy-chain');

const [port, user, pass] = [Number(process.argv[2]), process.argv[3], process.argv[4]];
const server = new ProxyChain.Server({
  port,
  host: '127.0.0.1',
  verbose: false,
  prepareRequestFunction: ({ username, password }) => ({
    requestAuthentication: username !== user || password !== pass,
  }),
});
server.listen();
