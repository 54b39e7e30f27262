# ruby-redis (Debian's ruby-redis 4.x) against the server: set, get, expire/ttl, hashes.
#
# usage: ruby ruby_redis.rb HOST PORT
require 'redis'

host = ARGV[0] || '127.0.0.1'
port = Integer(ARGV[1] || 6379)
P = "rb#{Process.pid}:"

def fail!(step, msg)
  warn "FAIL #{step}: #{msg}"
  exit 1
end

def eq(step, got, want)
  fail!(step, "got #{got.inspect}, want #{want.inspect}") unless got == want
  puts "ok   #{step}"
end

def within(step, got, range)
  fail!(step, "got #{got.inspect}, want within #{range}") unless range.cover?(got)
  puts "ok   #{step}"
end

r = Redis.new(host: host, port: port, timeout: 10)
eq('ping', r.ping, 'PONG')
eq('set', r.set(P + 'k', 'v1'), 'OK')
eq('get', r.get(P + 'k'), 'v1')
eq('get missing', r.get(P + 'missing'), nil)
eq('set nx on existing', r.set(P + 'k', 'v2', nx: true), false)
eq('set ex', r.set(P + 'k', 'v3', ex: 100), 'OK')
within('ttl after set ex', r.ttl(P + 'k'), 98..100)
eq('expire', r.expire(P + 'k', 200), true)
within('ttl after expire', r.ttl(P + 'k'), 198..200)
within('pttl', r.pttl(P + 'k'), 195_000..200_000)
eq('persist', r.persist(P + 'k'), true)
eq('ttl after persist', r.ttl(P + 'k'), -1)
eq('ttl missing', r.ttl(P + 'missing'), -2)

r.set(P + 'short', 'x', px: 300)
sleep 0.8
eq('expired key gone', r.get(P + 'short'), nil)

eq('hset', r.hset(P + 'h', 'a', '1', 'b', '2'), 2)
eq('hget', r.hget(P + 'h', 'a'), '1')
eq('hmget', r.hmget(P + 'h', 'a', 'zz', 'b'), ['1', nil, '2'])
eq('hgetall', r.hgetall(P + 'h'), { 'a' => '1', 'b' => '2' })
eq('hincrby', r.hincrby(P + 'h', 'n', 3), 3)
eq('hdel', r.hdel(P + 'h', 'a'), 1)
eq('hgetall after hdel', r.hgetall(P + 'h'), { 'b' => '2', 'n' => '3' })
eq('hlen', r.hlen(P + 'h'), 2)
begin
  r.hget(P + 'k', 'f')
  fail!('hget on a string', 'no error')
rescue Redis::CommandError => e
  fail!('hget on a string', "error #{e.message}") unless e.message.include?('WRONGTYPE')
  puts 'ok   hget on a string: WRONGTYPE'
end
eq('del', r.del(P + 'k', P + 'h', P + 'missing'), 2)
r.close
puts 'ruby_redis: all checks passed'
