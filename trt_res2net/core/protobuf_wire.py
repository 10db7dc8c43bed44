"""Protocol-buffer messages read field by field from their bytes (a memory map of an ONNX file, say), past the
payloads nobody asked for: the ONNX readers (``model.contract``, ``core.onnx_files``) read what they need without
loading a model's weights or importing ONNX's package."""

from __future__ import annotations


def varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def fields(buf, start: int, end: int):
    """(field number, wire type, payload start, payload end) per field of the protocol-buffer message buf[start:end]
    (a varint's payload is its bytes; a fixed64/fixed32's its 8/4 bytes; a length-delimited field's its data)."""
    pos = start
    while pos < end:
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        payload = pos
        if wire == 0:
            _, pos = varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, payload = varint(buf, pos)
            pos = payload + length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("truncated field")
        yield number, wire, payload, pos
