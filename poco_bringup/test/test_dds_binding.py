"""DDS bound to the operator's interfaces (issue 11 item 3), checked the way an operator would: two real
processes talk over the profile poco_bringup.dds writes, and the sockets each one holds are read from /proc.

The participant's well-known RTPS ports for the domain (PB 7400 + DG 250 x domain + offsets, where discovery
and data arrive) must be bound to 127.0.0.1 with the profile; without it they are bound to 0.0.0.0, which
the last test shows (so the check can fail)."""
import json
import subprocess
import sys

import pytest

from _bringup_helpers import private_domain, ros_env
from poco_bringup import dds

PROBE = r'''
import json, os, socket, struct, sys, time
import rclpy
from std_msgs.msg import String
rclpy.init()
node = rclpy.create_node('dds_probe_' + sys.argv[1])
got = []
pub = node.create_publisher(String, 'dds_probe', 10)
node.create_subscription(String, 'dds_probe', lambda m: got.append(m.data), 10)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pub.publish(String(data=sys.argv[1]))
    rclpy.spin_once(node, timeout_sec=0.05)
inodes = set()
for fd in os.listdir('/proc/self/fd'):
    try:
        link = os.readlink(f'/proc/self/fd/{fd}')
    except OSError:
        continue
    if link.startswith('socket:['):
        inodes.add(link[8:-1])
socks = []
for line in open('/proc/net/udp').read().splitlines()[1:]:
    c = line.split()
    if c[9] in inodes:
        ip, port = c[1].split(':')
        socks.append([socket.inet_ntoa(struct.pack('<I', int(ip, 16))), int(port, 16)])
print(json.dumps({'from_peer': sorted({g for g in got if g != sys.argv[1]}), 'sockets': socks}))
'''


def _rtps_ports(domain: int) -> range:
    base = 7400 + 250 * domain
    return range(base, base + 250)     # multicast + unicast ports of every participant id in the domain


def _pair(tmp_path, domain, env_extra):
    env = dict(ros_env(domain), **env_extra)
    procs = [subprocess.Popen([sys.executable, '-c', PROBE, name, '6'], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ('a', 'b')]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def test_profile_binds_rtps_ports_to_loopback_and_peers_still_talk(tmp_path):
    domain, lock = private_domain()
    try:
        env = dds.dds_env(tmp_path, environ={})
        assert env[dds.PROFILE_ENV].endswith('fastdds_profile.xml')
        a, b = _pair(tmp_path, domain, env)
    finally:
        if lock is not None:
            lock.close()
    assert a['from_peer'] == ['b'] and b['from_peer'] == ['a'], (a, b)
    for r in (a, b):
        rtps = [(ip, port) for ip, port in r['sockets'] if port in _rtps_ports(domain)]
        assert rtps, r['sockets']          # the participant did open its well-known ports
        assert all(ip == '127.0.0.1' for ip, _ in rtps), rtps


def test_without_profile_the_same_ports_listen_on_every_interface(tmp_path):
    domain, lock = private_domain()
    try:
        a, _ = _pair(tmp_path, domain, {})
    finally:
        if lock is not None:
            lock.close()
    rtps = [(ip, port) for ip, port in a['sockets'] if port in _rtps_ports(domain)]
    assert any(ip == '0.0.0.0' for ip, _ in rtps), rtps


def test_bad_interface_is_refused_in_one_line_and_operator_profile_wins(tmp_path):
    with pytest.raises(ValueError, match="'eth0'.*IPv4 address"):
        dds.profile_xml(['eth0'])
    with pytest.raises(ValueError, match='at least one'):
        dds.profile_xml([])
    assert dds.dds_env(tmp_path, environ={dds.PROFILE_ENV: '/etc/my_profile.xml'}) == {}
    xml = dds.profile_xml(['127.0.0.1', '10.0.0.5'])
    assert '<address>10.0.0.5</address>' in xml and '<useBuiltinTransports>false' in xml


def test_runner_writes_the_profile_for_every_node_and_refuses_a_bad_interface(tmp_path):
    env = dict(ros_env(7))
    env.pop(dds.PROFILE_ENV, None)
    run = tmp_path / 'run'
    r = subprocess.run([sys.executable, '-m', 'poco_bringup.runner', 'sim', '--obs-mode', 'state', '--run-dir',
                        str(run), '--dry-run', '--domain-id', '7'], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'DDS on 127.0.0.1' in r.stdout + r.stderr
    meta = json.loads((run / 'run.json').read_text())
    prof = run / 'params' / 'fastdds_profile.xml'
    assert meta['dds_profile'] == str(prof) and meta['dds_interfaces'] == ['127.0.0.1']
    assert '<address>127.0.0.1</address>' in prof.read_text()
    bad = subprocess.run([sys.executable, '-m', 'poco_bringup.runner', 'sim', '--run-dir', str(tmp_path / 'r2'),
                          '--dry-run', '--domain-id', '7', '--dds-interfaces', 'eth0'], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count('\n') == 0, bad.stderr
    assert "--dds-interfaces" in bad.stderr and "'eth0'" in bad.stderr
