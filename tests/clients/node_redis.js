// node-redis (Debian's node-redis 4.x) against the server: set, get, expire/ttl, hashes.
//
// usage: NODE_PATH=/usr/share/nodejs node node_redis.js HOST PORT
//
// Debian installs the package and its dependencies (@redis/client...) under /usr/share/nodejs,
// which a Node not built by Debian (e.g. NodeSource's) does not search: NODE_PATH adds it (npm
// is not reachable to install the package elsewhere).
'use strict';

let redis;
try {
  redis = require('redis');
} catch (e) {
  console.error(`FAIL require('redis'): ${e.message}\n` +
    'install it with scripts/install-test-deps.sh (Debian node-redis) and run with NODE_PATH=/usr/share/nodejs');
  process.exit(1);
}

const host = process.argv[2] || '127.0.0.1';
const port = Number(process.argv[3] || 6379);
const p = `node${process.pid}:`;

function fail(step, msg) {
  console.error(`FAIL ${step}: ${msg}`);
  process.exit(1);
}

function eq(step, got, want) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) fail(step, `got ${g}, want ${w}`);
  console.log(`ok   ${step}`);
}

async function main() {
  const client = redis.createClient({ socket: { host, port, connectTimeout: 10000 } });
  client.on('error', (e) => fail('connection', String(e)));
  await client.connect();

  eq('ping', await client.ping(), 'PONG');
  eq('set', await client.set(p + 'k', 'v1'), 'OK');
  eq('get', await client.get(p + 'k'), 'v1');
  eq('get missing', await client.get(p + 'missing'), null);
  eq('set NX on existing', await client.set(p + 'k', 'v2', { NX: true }), null);
  eq('set EX', await client.set(p + 'k', 'v3', { EX: 100 }), 'OK');
  const ttl = await client.ttl(p + 'k');
  if (ttl < 98 || ttl > 100) fail('ttl after set EX', `ttl=${ttl}`);
  console.log('ok   ttl after set EX');
  eq('expire', await client.expire(p + 'k', 200), true);
  const ttl2 = await client.ttl(p + 'k');
  if (ttl2 < 198 || ttl2 > 200) fail('ttl after expire', `ttl=${ttl2}`);
  console.log('ok   ttl after expire');
  eq('persist', await client.persist(p + 'k'), true);
  eq('ttl after persist', await client.ttl(p + 'k'), -1);
  eq('ttl missing', await client.ttl(p + 'missing'), -2);

  await client.set(p + 'short', 'x', { PX: 300 });
  await new Promise((r) => setTimeout(r, 800));
  eq('expired key gone', await client.get(p + 'short'), null);

  eq('hSet', await client.hSet(p + 'h', { a: '1', b: '2' }), 2);
  eq('hGet', await client.hGet(p + 'h', 'a'), '1');
  eq('hGetAll', await client.hGetAll(p + 'h'), { a: '1', b: '2' });
  eq('hIncrBy', await client.hIncrBy(p + 'h', 'n', 3), 3);
  eq('hDel', await client.hDel(p + 'h', 'a'), 1);
  eq('hGetAll after hDel', await client.hGetAll(p + 'h'), { b: '2', n: '3' });
  eq('incr', await client.incr(p + 'c'), 1);
  eq('mGet', await client.mGet([p + 'k', p + 'missing', p + 'c']), ['v3', null, '1']);

  try {
    await client.hGet(p + 'k', 'f');
    fail('hGet on a string', 'no error');
  } catch (e) {
    if (!String(e).includes('WRONGTYPE')) fail('hGet on a string', `error ${e}`);
    console.log('ok   hGet on a string: WRONGTYPE');
  }
  eq('del', await client.del([p + 'k', p + 'h', p + 'c', p + 'missing']), 3);
  await client.quit();
  console.log('node_redis: all checks passed');
}

main().catch((e) => fail('unexpected', e && e.stack ? e.stack : String(e)));
