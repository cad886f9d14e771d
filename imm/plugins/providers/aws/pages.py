"""DescribeInstances pages read straight into imm ``Instance`` objects.

libcloud's ``EC2NodeDriver._to_node`` looks up ~77 namespaced XPaths per instance (block devices,
interfaces, groups, product codes, every ``extra`` attribute) to build a ``Node`` of which imm
keeps ten fields: at 1,000 instances a page that was most of a sweep's time. Here each instance
item's children are walked once and only those fields read. libcloud still does the HTTP,
signing, error mapping and the one ElementTree parse of the page (``response.object``).

The values are exactly what ``AWSCore._to_instance(region, driver._to_node(item))`` gives
(``tests/unit/test_plugins_providers_aws_pages.py`` compares both on moto's answers):
ElementTree's ``findtext`` semantics (the first match in document order, ``""`` for an
element without text, ``None`` for a missing one), ``Name`` tag or else the instance id as the
name, terminated/shutting-down states mapped as before.

:func:`stream_pages` hands the regions' pages on as they arrive.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...base import Instance
from ...cloud import parse_time

STATE_MAP = {
    "pending": "pending", "running": "running", "stopping": "stopped", "stopped": "stopped",
    "shutting-down": "terminated", "terminated": "terminated",
}

# Child elements of an instance item whose text is read as is (tag -> key in ``fields``).
_TEXT = ("instanceId", "launchTime", "ipAddress", "privateIpAddress", "imageId", "instanceType",
         "subnetId", "vpcId")
# Child elements whose first child of the given name is read ("instanceState/name", ...).
_NESTED = (("instanceState", "name"), ("placement", "availabilityZone"))


class _Tags:
    """Namespaced tag names for one namespace (built once per namespace)."""

    _cache: dict[str, _Tags] = {}

    def __init__(self, ns: str) -> None:
        q = f"{{{ns}}}" if ns else ""
        self.reservation_set = q + "reservationSet"
        self.instances_set = q + "instancesSet"
        self.item = q + "item"
        self.next_token = q + "nextToken"
        self.tag_set = q + "tagSet"
        self.key = q + "key"
        self.value = q + "value"
        self.text = {q + t: t for t in _TEXT}
        self.nested = {q + t: (t, q + sub) for t, sub in _NESTED}

    @classmethod
    def of(cls, ns: str) -> _Tags:
        tags = cls._cache.get(ns)
        if tags is None:
            tags = cls._cache[ns] = cls(ns)
        return tags


def _first_text(elem: Any, tag: str) -> str | None:
    """``elem.findtext(tag)`` for a direct child ``tag``."""
    for child in elem:
        if child.tag == tag:
            return child.text or ""
    return None


def _item_fields(item: Any, t: _Tags) -> tuple[dict[str, str], dict[str, str | None]]:
    """The text of the fields imm reads from one instance item, and its tags (raw values)."""
    fields: dict[str, str] = {}
    tags: dict[str, str | None] = {}
    text, nested = t.text, t.nested
    for child in item:
        tag = child.tag
        name = text.get(tag)
        if name is not None:
            if name not in fields:
                fields[name] = child.text or ""
        elif tag == t.tag_set:
            for entry in child:
                if entry.tag == t.item:
                    # ``None`` keys and values as libcloud's findtext gives them
                    tags[_first_text(entry, t.key)] = _first_text(entry, t.value)  # type: ignore[index]
        else:
            sub = nested.get(tag)
            if sub is not None and sub[0] not in fields:
                value = _first_text(child, sub[1])
                if value is not None:
                    fields[sub[0]] = value
    return fields, tags


def _libcloud_time(text: str) -> int | None:
    """A launch time Python's ISO parser refused, read as libcloud's ``created_at`` was (and 0
    for text neither can read, where libcloud's ``_to_node`` failed the whole page)."""
    from libcloud.utils.iso8601 import parse_date_allow_empty

    try:
        return parse_time(parse_date_allow_empty(text))
    except Exception:  # libcloud's ParseError and whatever its regex path raises
        return None


def to_instance(item: Any, ns: str, provider: str, region: str) -> Instance:
    """One ``instancesSet/item`` element as an imm ``Instance``."""
    fields, raw_tags = _item_fields(item, _Tags.of(ns))
    get = fields.get
    instance_id = get("instanceId")
    raw_state = get("instanceState") or ""
    launch_time = get("launchTime")
    launched = parse_time(launch_time)
    if not launched and launch_time:
        launched = _libcloud_time(launch_time)
    private = get("privateIpAddress") or None
    public = get("ipAddress") or None
    name = raw_tags.get("Name", instance_id)
    extra = {
        "aws_state": raw_state or None, "instance_type": get("instanceType"),
        "availability_zone": get("placement"), "private_ip": private, "public_ip": public,
        "subnet_id": get("subnetId"), "vpc_id": get("vpcId"), "name": name,
    }
    return Instance(
        id=instance_id or None,  # type: ignore[arg-type]  # as libcloud's Node: None if empty
        provider=provider, region=region, image_id=get("imageId") or "",
        state=STATE_MAP.get(raw_state, "unknown"), launched_at=launched or 0,
        tags={str(k): "" if v is None else v for k, v in raw_tags.items()},
        address=private or public,
        extra={k: v for k, v in extra.items() if v is not None},
    )


def page_instances(page: Any, ns: str, provider: str, region: str
                   ) -> tuple[list[Instance], str | None]:
    """A parsed DescribeInstances answer -> (its instances in order, its nextToken)."""
    t = _Tags.of(ns)
    out: list[Instance] = []
    token: str | None = None
    for child in page:
        if child.tag == t.reservation_set:
            for reservation in child:
                if reservation.tag != t.item:
                    continue
                for part in reservation:
                    if part.tag == t.instances_set:
                        out.extend(to_instance(item, ns, provider, region)
                                   for item in part if item.tag == t.item)
        elif child.tag == t.next_token and token is None:
            token = child.text or ""
    return out, token


MAX_REGION_THREADS = 8


def stream_pages(sources: Mapping[str, Callable[[], Iterator[list[Instance]]]], thread_name: str
                 ) -> Iterator[list[Instance]]:
    """Every source's pages, each handed on as it arrives (not all regions' first).

    One source (a region) is paged in the caller's thread. Several are paged concurrently in
    threads of their own (up to ``MAX_REGION_THREADS``) into a queue that holds at most one
    page per source: a slow consumer holds the producers back, so memory stays a few pages,
    not the whole fleet. A source's error is raised to the consumer, after the pages that came
    before it; the other sources are then stopped. Closing the iterator early (or dropping it)
    stops the producers at their next page and never waits for them, so it is safe wherever
    the generator happens to be finalised.
    """
    if len(sources) == 1:
        (only,) = sources.values()
        yield from only()
        return
    q: queue.Queue[tuple[str, list[Instance] | BaseException | None]] = queue.Queue(len(sources))
    stop = threading.Event()

    def put(item: tuple[str, list[Instance] | BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce(name: str, source: Callable[[], Iterator[list[Instance]]]) -> None:
        try:
            for page in source():
                if not put((name, page)):
                    return
            put((name, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put((name, exc))

    pool = ThreadPoolExecutor(max_workers=min(MAX_REGION_THREADS, len(sources)),
                              thread_name_prefix=thread_name)
    try:
        for name, source in sources.items():
            pool.submit(produce, name, source)
        left = len(sources)
        while left:
            _name, got = q.get()
            if got is None:
                left -= 1
            elif isinstance(got, BaseException):
                raise got
            else:
                yield got
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
