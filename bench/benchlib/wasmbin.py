"""Reading just enough of a wasm binary to count what a rewriter changed: sections, imports, defined
functions and globals, exports, custom section sizes, function body sizes; and adding a name."""
import os

from benchlib.context import ToolError


def leb_u(n):
    """Unsigned LEB128 encoding of n."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def read_leb(b, i):
    """Unsigned LEB128 at b[i]: (value, index after it)."""
    r = shift = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << shift
        shift += 7
        if x < 0x80:
            return r, i


def read_name(b, i):
    n, i = read_leb(b, i)
    return b[i:i + n].decode("utf-8", "replace"), i + n


def wasm_sections(data):
    """[(id, custom section name or None, section start, payload start, payload end)] of a module."""
    if data[:4] != b"\0asm":
        raise ToolError("not a wasm module")
    out, i = [], 8
    while i < len(data):
        size, j = read_leb(data, i + 1)
        name = read_name(data, j)[0] if data[i] == 0 else None
        out.append((data[i], name, i, j, j + size))
        i = j + size
    return out


def wasm_summary(path):
    """What a rewriter changed, in counts: bytes, bytes without custom sections, code section bytes,
    imports per kind, defined functions and globals, exports {name: (kind, index)}, custom section sizes."""
    with open(path, "rb") as f:
        data = f.read()
    s = {"bytes": len(data), "no_custom_bytes": 8, "code_bytes": 0, "funcs": 0, "globals": 0,
         "imported": {"func": 0, "table": 0, "memory": 0, "global": 0, "tag": 0}, "exports": {}, "custom": {}}

    def skip_reftype(i):
        return read_leb(data, i + 1)[1] if data[i] in (0x63, 0x64) else i + 1

    def skip_limits(i):
        flags = data[i]
        _, i = read_leb(data, i + 1)
        if flags & 1:
            _, i = read_leb(data, i)
        if flags & 8:  # custom page size
            _, i = read_leb(data, i)
        return i

    for sid, name, start, a, b in wasm_sections(data):
        if sid == 0:
            s["custom"][name] = s["custom"].get(name, 0) + b - start
            continue
        s["no_custom_bytes"] += b - start
        if sid == 2:
            n, i = read_leb(data, a)
            for _ in range(n):
                _, i = read_name(data, i)
                _, i = read_name(data, i)
                kind = data[i]
                i += 1
                if kind == 0:
                    _, i = read_leb(data, i)
                elif kind == 1:
                    i = skip_limits(skip_reftype(i))
                elif kind == 2:
                    i = skip_limits(i)
                elif kind == 3:
                    i = skip_reftype(i) + 1
                elif kind == 4:
                    _, i = read_leb(data, i + 1)
                else:
                    raise ToolError("%s: unknown import kind 0x%02x" % (path, kind))
                s["imported"][("func", "table", "memory", "global", "tag")[kind]] += 1
        elif sid == 3:
            s["funcs"] = read_leb(data, a)[0]
        elif sid == 6:
            s["globals"], i = read_leb(data, a)
            s["global_defs"] = []
            for _ in range(s["globals"]):
                vt = data[i]
                i = skip_reftype(i)
                mutable = data[i] == 1
                value, i = read_const_expr(data, i + 1)
                s["global_defs"].append((vt, mutable, value))
        elif sid == 7:
            n, i = read_leb(data, a)
            for _ in range(n):
                ename, i = read_name(data, i)
                kind = data[i]
                index, i = read_leb(data, i + 1)
                s["exports"][ename] = (kind, index)
        elif sid == 10:
            s["code_bytes"] = b - start
    return s


def code_section(path):
    with open(path, "rb") as f:
        data = f.read()
    for sid, _, _, a, b in wasm_sections(data):
        if sid == 10:
            return data[a:b]
    return b""


def read_const_expr(b, i):
    """A constant expression at b[i]: (value of a lone i32.const, else None; index after its `end`)."""
    value, count = None, 0
    while b[i] != 0x0B:
        op = b[i]
        i += 1
        count += 1
        if op == 0x41:  # i32.const: signed LEB
            start = i
            _, i = read_leb(b, i)
            v, shift = 0, 0
            for x in b[start:i]:
                v |= (x & 0x7F) << shift
                shift += 7
            if b[i - 1] & 0x40:
                v -= 1 << shift
            value = v
        elif op in (0x42, 0x23, 0xD2, 0xD0):  # i64.const, global.get, ref.func, ref.null: one LEB
            _, i = read_leb(b, i)
        elif op == 0x43:
            i += 4
        elif op == 0x44:
            i += 8
        elif op == 0xFD:  # v128.const
            _, i = read_leb(b, i)
            i += 16
        elif op == 0xFB:  # GC constants (struct.new, array.new_fixed, ...): opcode then up to two LEBs; rare
            raise ToolError("GC constant expressions are not supported by this bench's parser")
        # extended-const arithmetic (0x6a, 0x6b, 0x6c, 0x7c, 0x7d, 0x7e) has no immediates
    return (value if count == 1 else None), i + 1


def code_body_sizes(path):
    """Encoded size (with its size LEB) of every function body in path's code section, in order."""
    code = code_section(path)
    if not code:
        return []
    n, i = read_leb(code, 0)
    out = []
    for _ in range(n):
        size, j = read_leb(code, i)
        out.append(j - i + size)
        i = j + size
    return out


def add_global_name(src, dst, index, name):
    """Copy src to dst with a name section in which global `index` is called `name` (subsection 7, global
    names: vec of (index, name)). An existing name section is merged (its other subsections and global
    names kept) and moved to the end; otherwise one is appended. Returns the bytes added."""
    with open(src, "rb") as f:
        data = f.read()
    subs, gnames = {}, {}
    for sid, sname, start, a, b in wasm_sections(data):
        if sid == 0 and sname == "name":
            _, k = read_name(data, a)
            while k < b:
                size, j = read_leb(data, k + 1)
                if data[k] == 7:
                    n, i = read_leb(data, j)
                    for _ in range(n):
                        g, i = read_leb(data, i)
                        gnames[g], i = read_name(data, i)
                else:
                    subs[data[k]] = data[j:j + size]
                k = j + size
            data = data[:start] + data[b:]
            break
    gnames[index] = name
    vec = leb_u(len(gnames)) + b"".join(leb_u(g) + leb_u(len(n.encode())) + n.encode() for g, n in sorted(gnames.items()))
    subs[7] = vec
    content = leb_u(4) + b"name" + b"".join(bytes([k]) + leb_u(len(v)) + v for k, v in sorted(subs.items()))
    out = data + b"\0" + leb_u(len(content)) + content
    with open(dst, "wb") as f:
        f.write(out)
    return len(out) - os.path.getsize(src)


def growth_pct(new, old):
    return None if new is None or not old else round(100.0 * (new - old) / old, 3)

