"""sandboxer's own metadata in libvirt XML (domains and networks): our namespace, with
the labels that tell ours apart (pure: no engine calls)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping

NAMESPACE = "https://github.com/sandboxer/sandboxer/libvirt/1"
NAMESPACE_PREFIX = "sandboxer"


def metadata_holder(root: ET.Element, kind: str, labels: Mapping[str, str]) -> ET.Element:
    """<metadata><sandboxer:KIND> under `root`, holding one element per label."""
    holder = ET.SubElement(ET.SubElement(root, "metadata"), f"{NAMESPACE_PREFIX}:{kind}")
    holder.set(f"xmlns:{NAMESPACE_PREFIX}", NAMESPACE)
    for key, value in sorted(labels.items()):
        ET.SubElement(holder, f"{NAMESPACE_PREFIX}:label", name=key).text = value
    return holder


def parse_labels(metadata: str | bytes) -> dict[str, str]:
    """Labels back from our metadata element (what `virDomainGetMetadata` returns for our
    namespace, or the element in a network's XML)."""
    element = ET.fromstring(metadata)
    return {
        label.get("name", ""): label.text or ""
        for label in element
        if label.tag.rsplit("}", 1)[-1].rsplit(":", 1)[-1] == "label"
    }
