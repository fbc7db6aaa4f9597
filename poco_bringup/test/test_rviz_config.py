"""config/poco.rviz follows the robot's namespace (issue 12, item 6): every topic it shows is a per-robot
contract topic written relative (no leading '/'), so rviz2 started in `namespace:=robot1` (graph.py passes the
namespace to rviz as __ns) subscribes /robot1/<topic>; and the QoS each display requests can match what the
publisher of that topic offers (poco_policy.contract), so nothing is silently never received."""
from __future__ import annotations

from pathlib import Path

import yaml

from poco_bringup import graph
from poco_policy import contract as C

RVIZ = Path(graph.__file__).resolve().parents[1] / 'config' / 'poco.rviz'


def displays(node):
    """Every display (a mapping with Class and a Topic) anywhere in the config."""
    if isinstance(node, dict):
        if 'Class' in node and isinstance(node.get('Topic'), dict):
            yield node
        for v in node.values():
            yield from displays(v)
    elif isinstance(node, list):
        for v in node:
            yield from displays(v)


def test_rviz_topics_are_relative_contract_topics():
    found = list(displays(yaml.safe_load(RVIZ.read_text())))
    topics = {d['Name']: d['Topic']['Value'] for d in found}
    assert len(found) >= 5, topics
    for name, topic in topics.items():
        assert not topic.startswith('/'), f'{name}: {topic} is absolute: namespace:=robot1 would not show it'
        C.qos_spec(topic)  # a contract topic (KeyError otherwise)
    assert set(topics.values()) >= {C.CHUNK_MARKERS, C.SAFETY_BOX, C.STATUS_MARKER,
                                    *(C.camera_topic(c) for c in C.CAMERAS)}


def test_rviz_qos_matches_the_publishers():
    for d in displays(yaml.safe_load(RVIZ.read_text())):
        t, pub = d['Topic'], C.qos_spec(d['Topic']['Value'])
        if t['Reliability Policy'] == 'Reliable':
            assert pub.reliability == 'reliable', (d['Name'], pub)
        if t['Durability Policy'] == 'Transient Local':
            assert pub.durability == 'transient_local', (d['Name'], pub)
        if pub.durability == 'transient_local':  # latched: a late rviz must still get the last value
            assert t['Durability Policy'] == 'Transient Local', d['Name']


def test_graph_starts_rviz_in_the_robot_namespace():
    specs = graph.sim_graph(rviz=True, namespace='robot1', monitor=False)
    rviz = next(s for s in specs if s.package == 'rviz2')
    assert rviz.namespace.strip('/') == 'robot1' and str(RVIZ.name) in ' '.join(rviz.arguments)
