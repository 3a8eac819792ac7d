#!/usr/bin/env python3
"""Generates include/peftswift.h from the Swift sources.

The declarations come from the compiler's generated header (PeftSwift-Swift.h, the plain C
section that Swift 6.3 writes for `@c(pstimpl_...) public func`); each function's documentation
is the `///` comment above its `@c` attribute in Sources/PeftSwift. The Swift functions are
exported under `pstimpl_NAME` and declared here as `pst_NAME`: the `pst_NAME` the library exports
is the CPU-checking entry in Sources/CPeftSwift/entry.c (scripts/gen_entry.py), which calls
`pstimpl_NAME` only on a CPU that runs the engine. The hand-written parts are
Sources/CPeftSwift/include/peftswift_types.h (status codes, constants, types; one block per
section) and scripts/header_overview.txt (the opening comment).

What the generator decides, by rules that fail loudly rather than guess:
  - Sections. Every function belongs to the section whose name prefix it carries (SECTIONS
    below, in header order); a function no prefix claims, or two claim, is an error. Each
    section opens with its block of peftswift_types.h (intro paragraph, then types), then its
    functions in source order.
  - Return types. Every function returning int32_t reports a status and is declared pst_status,
    except the functions in INT32_VALUES, which return a number.
  - Parameter names are the Swift source's. The compiler appends `_` to names that are
    Objective-C keywords (`out` -> `out_`, `module` -> `module_`); the header takes the Swift
    name back. A Swift parameter name ending in `_` is an error.
  - Integer types. Counts, lengths, capacities and indices are int64_t (Swift Int64); a Swift
    `Int` parameter (ptrdiff_t in C) is an error (header_overview.txt states the rule).
  - Style: `const char *name` (const first, the star with the name), declarations wrapped at
    100 columns.

Usage: gen_header.py SWIFT_GENERATED_HEADER [OUTPUT]   (OUTPUT defaults to include/peftswift.h)
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
WIDTH = 100

# (key of the peftswift_types.h block, title, function-name prefixes), in header order.
SECTIONS = [
    ("core", "Core", ["pst_version_", "pst_abi_", "pst_status_", "pst_last_error", "pst_set_num_threads",
                      "pst_get_num_threads", "pst_cpu_", "pst_set_isa", "pst_get_isa", "pst_host_isa"]),
    ("quantization", "Quantization", ["pst_4bit_", "pst_8bit_", "pst_nf4", "pst_quant_", "pst_codebook",
                                      "pst_blockwise_", "pst_absmax_"]),
    ("lora", "LoRA layers", ["pst_lora_"]),
    ("optimizers", "Optimizers", ["pst_adamw_", "pst_lr_"]),
    ("paging", "Paged memory", ["pst_pager_", "pst_paged_"]),
    ("files", "Files", ["pst_safetensors_", "pst_peft_", "pst_bnb_"]),
    ("llm", "Language models", ["pst_llm_", "pst_generate_"]),
    ("trainer", "Fine-tuning", ["pst_trainer_"]),
]

# int32_t functions that return a number, not a pst_status.
INT32_VALUES = {"pst_abi_version", "pst_get_num_threads", "pst_get_isa", "pst_host_isa"}

# Source files whose parameter names and integer types are checked with warnings only, until the
# LLM layer's C API is split and brought in line (then remove this).


def fail(msg):
    sys.exit(f"gen_header: {msg}")


def split_top(text, sep=","):
    """Splits at `sep` outside (), <> and []."""
    out, depth, cur, i = [], 0, "", 0
    while i < len(text):
        c = text[i]
        if text.startswith("->", i):
            cur += "->"
            i += 2
            continue
        if c in "(<[":
            depth += 1
        elif c in ")>]":
            depth -= 1
        if c == sep and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    if cur.strip():
        out.append(cur)
    return [p.strip() for p in out]


def swift_functions():
    """pst_name -> dict(src, line, doc, params) for every @c(pstimpl_...) in the engine."""
    out = {}
    for path in sorted((ROOT / "Sources/PeftSwift").rglob("*.swift")):
        text = path.read_text()
        lines = text.splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"\s*@c\(pstimpl_(\w+)\)", line)
            if not m:
                if re.match(r"\s*@c\(", line):
                    fail(f"{path}:{i + 1}: @c names must start with pstimpl_")
                continue
            name = "pst_" + m.group(1)
            doc = []
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("///"):
                doc.insert(0, lines[j].strip()[3:].rstrip())
                j -= 1
            # the Swift parameter list: from "func NAME(" to its closing parenthesis
            rest = "\n".join(lines[i + 1:])
            fm = re.search(r"\bfunc\s+" + re.escape(name) + r"\s*\(", rest)
            if not fm:
                fail(f"{path}:{i + 1}: no `func {name}(` after @c(pstimpl_{m.group(1)})")
            k, depth = fm.end(), 1
            while depth:
                depth += {"(": 1, ")": -1}.get(rest[k], 0)
                k += 1
            params = []
            for p in split_top(rest[fm.end():k - 1]):
                pm = re.match(r"(?:`?\w+`?\s+)?`?(\w+)`?\s*:", p)
                if not pm:
                    fail(f"{path}: {name}: cannot read the Swift parameter {p!r}")
                params.append((pm.group(1), p.split(":", 1)[1].strip()))
            out[name] = {"src": path.relative_to(ROOT).as_posix(), "line": i, "doc": doc, "params": params}
    return out


def c_type(t):
    """`char const * const *` -> `const char *const *`: const first, stars joined."""
    toks = t.split()
    if len(toks) >= 2 and toks[1] == "const" and toks[0] != "*":
        toks[0], toks[1] = "const", toks[0]
    base, ptr = [], []
    for k, tok in enumerate(toks):
        if tok == "*" or (tok == "const" and ptr):
            ptr = toks[k:]
            break
        base.append(tok)
    stars = ""
    for tok in ptr:
        stars += "*" if tok == "*" else "const "
    return " ".join(base), stars


def generated_decls(text):
    """name -> (return type, [(type, name)]) from the compiler's header."""
    decls = {}
    for line in text.splitlines():
        if not line.startswith("SWIFT_EXTERN "):
            continue
        m = re.match(r"SWIFT_EXTERN (.+?)\bpstimpl_(\w+)\((.*)\)(.*);$", line)
        if not m:
            continue
        clean = lambda s: re.sub(r"\s*\b(_Nullable|_Nonnull|_Null_unspecified)\b", "", s).strip()
        ret = clean(m.group(1))
        params = []
        if m.group(3).strip() != "void":
            for p in split_top(m.group(3)):
                p = clean(p)
                pm = re.match(r"(.*?)\s*\b(\w+)$", p)
                if not pm:
                    fail(f"cannot read parameter {p!r} of pstimpl_{m.group(2)}")
                params.append((pm.group(1).strip(), pm.group(2)))
        decls["pst_" + m.group(2)] = (ret, params)
    return decls


def declaration(name, ret, params):
    """The header's declaration of one function, wrapped at WIDTH columns."""
    warn = "PST_WARN_UNUSED_RESULT " if ret in ("int32_t", "pst_status") else ""
    base, stars = c_type(ret)
    head = f"PST_API {warn}{base} {stars}{name}("
    args = []
    for t, n in params:
        b, s = c_type(t)
        args.append(f"{b} {s}{n}")
    if not args:
        args = ["void"]
    tail = ") PST_NOEXCEPT;"
    lines, cur = [], head
    for k, a in enumerate(args):
        piece = a + ("," if k < len(args) - 1 else tail)
        if cur.endswith("("):
            cur += piece
        elif len(cur) + 1 + len(piece) > WIDTH:
            lines.append(cur)
            cur = "    " + piece
        else:
            cur += " " + piece
    lines.append(cur)
    return "\n".join(lines)


def section_of(name):
    hits = [key for key, _, prefixes in SECTIONS if any(name.startswith(p) for p in prefixes)]
    if len(hits) != 1:
        fail(f"{name} belongs to {'no section' if not hits else 'sections ' + ', '.join(hits)}: "
             "give it a name prefix of one section of SECTIONS in scripts/gen_header.py (or add a prefix there)")
    return hits[0]


def type_blocks():
    """(preamble, {section key: block text}) from peftswift_types.h."""
    text = (ROOT / "Sources/CPeftSwift/include/peftswift_types.h").read_text()
    body = text.split("#define PEFTSWIFT_TYPES_H", 1)[1].rsplit("#endif", 1)[0]
    parts = re.split(r"^/\* ==== section: (\w+) ==== \*/\n", body, flags=re.M)
    preamble, blocks = parts[0].strip("\n"), {}
    order = []
    for key, block in zip(parts[1::2], parts[2::2]):
        if key in blocks:
            fail(f"peftswift_types.h: two blocks for section {key}")
        blocks[key] = block.strip("\n")
        order.append(key)
    keys = [k for k, _, _ in SECTIONS]
    if order != keys:
        fail(f"peftswift_types.h: section blocks {order} must be exactly {keys}, in that order "
             "(one `/* ==== section: NAME ==== */` line each)")
    return preamble, blocks


def main():
    gen = pathlib.Path(sys.argv[1]).read_text()
    out = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "include/peftswift.h"
    decls = generated_decls(gen)
    funcs = swift_functions()
    missing = sorted(set(funcs) - set(decls))
    extra = sorted(set(decls) - set(funcs))
    if missing or extra:
        fail(f"@c functions without a C declaration {missing}; declarations without a source {extra}")

    errors, legacy = [], []
    final = {}
    for name, f in funcs.items():
        ret, params = decls[name]
        problems = []
        # return type: pst_status for every int32_t function but the listed value functions
        if name in INT32_VALUES:
            if ret != "int32_t":
                errors.append(f"{name} is listed in INT32_VALUES but returns {ret}")
        elif ret == "int32_t":
            ret = "pst_status"
        # parameter names: the Swift source's (the compiler escapes Objective-C keywords with `_`)
        if len(params) != len(f["params"]):
            errors.append(f"{name}: {len(params)} parameters in the generated header, {len(f['params'])} in {f['src']}")
            continue
        named = []
        for (ctype, cname), (sname, stype) in zip(params, f["params"]):
            if cname not in (sname, sname + "_"):
                errors.append(f"{name}: parameter {sname} of {f['src']} is {cname} in the generated header")
            if sname.endswith("_"):
                problems.append(f"parameter {sname} ends in `_`: name it without the suffix")
            if ctype in ("ptrdiff_t", "size_t") or re.fullmatch(r"U?Int", stype.rstrip("?")):
                problems.append(f"parameter {sname} is {ctype} (Swift {stype}): counts, lengths, capacities "
                                "and indices are int64_t (Swift Int64)")
            named.append((ctype, sname))
        if problems:
            errors.extend(f"{name} ({f['src']}): {p}" for p in problems)
        final[name] = (ret, named)
    if errors:
        fail("the C API breaks the header's rules:\n  " + "\n  ".join(errors))

    preamble, blocks = type_blocks()
    overview = (ROOT / "scripts/header_overview.txt").read_text().rstrip("\n")
    by_section = {key: [] for key, _, _ in SECTIONS}
    for name in sorted(funcs, key=lambda n: (funcs[n]["src"], funcs[n]["line"])):
        by_section[section_of(name)].append(name)

    parts = [
        "/* peftswift.h: the whole C API of libpeftswift.so. GENERATED by scripts/gen_header.py from",
        " * the @c functions of Sources/PeftSwift (via the compiler's generated PeftSwift-Swift.h),",
        " * Sources/CPeftSwift/include/peftswift_types.h and scripts/header_overview.txt. Do not edit:",
        " * edit those and run scripts/update-header.sh; a test fails when this file is stale. */",
        "#ifndef PEFTSWIFT_H",
        "#define PEFTSWIFT_H",
        "",
        overview,
        "",
        "#define PEFTSWIFT_TYPES_H /* the types below are peftswift_types.h */",
        preamble,
        "",
        "#if defined(__cplusplus)",
        "#  define PST_NOEXCEPT noexcept",
        "extern \"C\" {",
        "#else",
        "#  define PST_NOEXCEPT",
        "#endif",
        "#if defined(__GNUC__)",
        "#  define PST_API extern __attribute__((visibility(\"default\")))",
        "#  define PST_WARN_UNUSED_RESULT __attribute__((warn_unused_result))",
        "#else",
        "#  define PST_API extern",
        "#  define PST_WARN_UNUSED_RESULT",
        "#endif",
    ]
    rule = "=" * (WIDTH - 4)
    for key, title, _ in SECTIONS:
        parts += ["", "", f"/* {rule}", f" * {title}", f" * {rule} */", "", blocks[key]]
        for name in by_section[key]:
            f = funcs[name]
            parts.append("")
            if f["doc"]:
                parts.append("/**")
                parts += [(" *" + (" " + d if d and not d.startswith(" ") else d)).rstrip() for d in f["doc"]]
                parts.append(" */")
            parts.append(declaration(name, *final[name]))
    parts += [
        "",
        "#if defined(__cplusplus)",
        "} /* extern \"C\" */",
        "#endif",
        "#endif /* PEFTSWIFT_H */",
        "",
    ]
    text = "\n".join(parts)
    tmp = out.with_suffix(".h.tmp")
    tmp.write_text(text)
    tmp.replace(out)


if __name__ == "__main__":
    main()
