"""Bind DDS to the network interfaces the operator names (loopback by default), through Fast DDS's own XML
profile: a UDPv4 transport whose interface allowlist holds those addresses, plus shared memory (same host),
and no built-in transports. Every node the runner starts gets the profile through FASTDDS_DEFAULT_PROFILES_FILE.

What it does and does not do (measured by poco_bringup/test/test_dds_binding.py on rmw_fastrtps_cpp / Fast DDS 3.2):
the participant's discovery and data ports (the ones it announces to peers) are bound to the allowed
addresses instead of 0.0.0.0, so no other host can reach them. With ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
Fast DDS still opens two ephemeral-port sockets for sending; peers are only ever on loopback there.

This is interface binding, not authentication: weights are signed separately (poco_policy/weights.py), and
DDS Security (SROS2) is the tool for authenticating every topic on a shared network.
"""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from xml.sax.saxutils import escape

PROFILE_ENV = 'FASTDDS_DEFAULT_PROFILES_FILE'
DEFAULT_INTERFACES = ('127.0.0.1',)


def check_interfaces(addresses) -> list[str]:
    """IPv4 addresses (one per interface) or ValueError naming the bad one."""
    out = []
    for a in addresses:
        try:
            ip = ipaddress.ip_address(str(a).strip())
        except ValueError:
            raise ValueError(f'dds interface {a!r}: expected an IPv4 address such as 127.0.0.1') from None
        if ip.version != 4:
            raise ValueError(f'dds interface {a!r}: only IPv4 is supported')
        out.append(str(ip))
    if not out:
        raise ValueError('dds interfaces: at least one address is needed (127.0.0.1 = this host only)')
    return out


def profile_xml(addresses=DEFAULT_INTERFACES) -> str:
    allow = '\n'.join(f'          <address>{escape(a)}</address>' for a in check_interfaces(addresses))
    return f'''<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by poco_bringup.dds: DDS only on the interfaces named here (and shared memory on this host). -->
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>poco_udp</transport_id>
        <type>UDPv4</type>
        <interfaceWhiteList>
{allow}
        </interfaceWhiteList>
      </transport_descriptor>
      <transport_descriptor>
        <transport_id>poco_shm</transport_id>
        <type>SHM</type>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="poco_participant" is_default_profile="true">
      <rtps>
        <userTransports>
          <transport_id>poco_udp</transport_id>
          <transport_id>poco_shm</transport_id>
        </userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
      </rtps>
    </participant>
  </profiles>
</dds>
'''


def write_profile(path: str | Path, addresses=DEFAULT_INTERFACES) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(profile_xml(addresses))
    return p


def dds_env(run_dir: str | Path, addresses=DEFAULT_INTERFACES, environ=None) -> dict[str, str]:
    """Environment entries for the nodes of one run. A profile file the operator already set is kept: it is
    their middleware configuration, and it wins."""
    environ = os.environ if environ is None else environ
    if environ.get(PROFILE_ENV):
        return {}
    return {PROFILE_ENV: str(write_profile(Path(run_dir) / 'params' / 'fastdds_profile.xml', addresses))}
