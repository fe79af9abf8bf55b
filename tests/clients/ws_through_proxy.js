// A real WebSocket client (ws) reaching a ws:// server through the gateway by plain HTTP
// forwarding (http-proxy-agent sends `GET ws://…` with Upgrade; the gateway relays the 101
// and tunnels). usage: node ws_through_proxy.js PROXY_URL
// Prints the echoed message and exits 0; anything else exits 1 with the reason.
const { WebSocketServer, WebSocket } = require('ws');
const { HttpProxyAgent } = require('http-proxy-agent');

const proxy = process.argv[2];
const fail = (why) => { console.log(`FAIL ${why}`); process.exit(1); };
setTimeout(() => fail('timed out'), 15000).unref();
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 }, () => {
  wss.on('connection', (s) => s.on('message', (m) => s.send(`echo:${m}`)));
  const ws = new WebSocket(`ws://127.0.0.1:${wss.address().port}/chat`, { agent: new HttpProxyAgent(proxy) });
  ws.on('open', () => ws.send('hello through tollgate'));
  ws.on('message', (m) => { console.log(`${m}`); ws.close(); wss.close(); process.exit(0); });
  ws.on('unexpected-response', (_req, res) => fail(`status ${res.statusCode}`));
  ws.on('error', (e) => fail(e.message));
});
