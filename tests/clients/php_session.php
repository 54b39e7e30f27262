<?php
// PHP's own session handler from phpredis (`session.save_handler = redis`) against the server:
// two separate `php` processes share one session.
//
// usage: php php_session.php HOST PORT
//
// This process ("first") starts a session and writes it; it then runs a second `php` process
// (this file with `second SID`) that reads the session, checks it, increments the counter and
// writes it back; the first process then reopens the session and must see the increment. The
// stored key (PHPREDIS_SESSION:<sid>) is checked with phpredis's Redis class: a string with
// gc_maxlifetime as its TTL, and gone after session_destroy().

$host = $argv[1] ?? '127.0.0.1';
$port = (int)($argv[2] ?? 6379);
$role = $argv[3] ?? 'first';
const LIFETIME_S = 600;

// The same settings a php.ini of a site using the redis handler would carry.
ini_set('session.save_handler', 'redis');
ini_set('session.save_path', "tcp://$host:$port");
ini_set('session.gc_maxlifetime', (string)LIFETIME_S);
ini_set('session.use_cookies', '0');      // CLI: no HTTP headers to send
ini_set('session.cache_limiter', '');
ini_set('session.serialize_handler', 'php');

function fail(string $step, string $msg): void {
    fwrite(STDERR, "FAIL $step: $msg\n");
    exit(1);
}

function eq(string $step, $got, $want): void {
    if ($got !== $want) {
        fail($step, 'got ' . var_export($got, true) . ', want ' . var_export($want, true));
    }
    echo "ok   $step\n";
}

function open_session(string $step, ?string $sid = null): void {
    if ($sid !== null) {
        session_id($sid);
    }
    if (!session_start()) {
        fail($step, 'session_start() failed: ' . (error_get_last()['message'] ?? '?'));
    }
}

if ($role === 'second') {
    // A different process: nothing shared with the first but the server.
    $sid = $argv[4];
    open_session('second: session_start', $sid);
    eq('second: reads the first process\'s session', $_SESSION['user'] ?? null, 'alice');
    eq('second: counter written by the first', $_SESSION['count'] ?? null, 1);
    $_SESSION['count'] += 1;
    $_SESSION['seen_by'] = 'second';
    if (!session_write_close()) {
        fail('second: session_write_close', 'failed');
    }
    exit(0);
}

// --- first process ------------------------------------------------------------------------------
open_session('first: session_start');
$sid = session_id();
$_SESSION['user'] = 'alice';
$_SESSION['count'] = 1;
if (!session_write_close()) {
    fail('first: session_write_close', 'failed');
}
echo "ok   first: wrote session $sid\n";

$redis = new Redis();
if (!$redis->connect($host, $port, 10.0)) {
    fail('phpredis connect', "cannot connect to $host:$port");
}
$key = "PHPREDIS_SESSION:$sid";
eq('session stored as a string', $redis->type($key), Redis::REDIS_STRING);
$ttl = $redis->ttl($key);
if ($ttl < LIFETIME_S - 5 || $ttl > LIFETIME_S) {
    fail('session TTL is gc_maxlifetime', "ttl=$ttl, want about " . LIFETIME_S);
}
echo "ok   session TTL is gc_maxlifetime ($ttl)\n";

// The second process: same interpreter, same handler, the session id on the command line.
$cmd = [PHP_BINARY, __FILE__, $host, (string)$port, 'second', $sid];
$proc = proc_open($cmd, [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
if (!is_resource($proc)) {
    fail('run second process', 'proc_open failed');
}
$out = stream_get_contents($pipes[1]) . stream_get_contents($pipes[2]);
$status = proc_close($proc);
echo $out;
eq('second process exit status', $status, 0);

open_session('first: session_start again', $sid);
eq('first sees the second\'s increment', $_SESSION['count'] ?? null, 2);
eq('first sees the second\'s field', $_SESSION['seen_by'] ?? null, 'second');
eq('first still has its own field', $_SESSION['user'] ?? null, 'alice');
session_destroy();
eq('destroyed session gone from the server', $redis->exists($key), 0);

echo "php_session: all checks passed\n";
