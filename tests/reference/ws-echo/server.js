// Machine calibration for `tenantry-bench echo`: plain `ws` (the Node
// WebSocket server) answering svelte-realtime echo RPCs the way a Node host
// does (JSON.parse, the handler, JSON.stringify), with no sandbox, tenancy
// or limits. It prints the line the bench waits for, so the bench starts,
// pins and measures it exactly as it does tenantry. The reference
// numbers (ws 10.8 us of server CPU per echo) were measured on a faster
// machine; running this on the same machine as tenantry tells how the two
// compare there. Setup: `npm install` in this directory (Node 18+).
const { WebSocketServer } = require('ws');
const http = require('http');
const server = http.createServer((req, res) => { res.end('ok'); });
const wss = new WebSocketServer({ server });
let n = 0;
wss.on('connection', (ws) => {
  ws.send(JSON.stringify({ type: 'welcome', sessionId: 's' + (n++) }));
  ws.on('message', (data) => {
    let m;
    try { m = JSON.parse(data); } catch { return; }
    if (m.rpc) {
      const out = { id: m.id, ok: true, data: m.args[0] };
      ws.send(JSON.stringify({ topic: '__rpc', event: m.id, data: out }));
    }
  });
});
server.listen(0, '127.0.0.1', () => {
  const a = server.address();
  console.log(`tenantry listening on http://127.0.0.1:${a.port}`);
});
