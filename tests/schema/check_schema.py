#!/usr/bin/env python3
"""The configuration's JSON Schema against the broker's own checks.

    check_schema.py current SWITCHBOARD SCHEMA
        the shipped schema is what `switchboard schema` prints now
    check_schema.py agree SWITCHBOARD SCHEMA EXAMPLES_DIR BAD_DIR
        every example is valid for the schema (and for check-config) and
        names the schema in its yaml-language-server comment; on each golden
        bad file (BAD_DIR/bad-*.yaml), the schema reports an error at every
        key check-config reports (FILE.expected) that a schema can express,
        and none where check-config reports nothing

Validation is python3-jsonschema's (Debian's), the YAML python3-yaml's, as
an editor would read the file (timestamps left as text: the broker has none).
"""
import os
import re
import subprocess
import sys

import jsonschema
import yaml

# check-config errors a JSON Schema cannot say, by "FILE:LINE:COL", with why.
# Every other line of a .expected file must be matched by a schema error.
NOT_EXPRESSED = {
    # one key with another, and addresses: the types' validate hooks
    "bad-adapters.yaml:5:5": "connect with listen (validate hook)",
    "bad-adapters.yaml:6:5": "path or connect needed (validate hook)",
    "bad-adapters.yaml:9:5": "command required for exec (validate hook)",
    "bad-adapters.yaml:18:14": "framing by type (validate hook)",
    "bad-adapters.yaml:22:14": "framing by type (validate hook)",
    "bad-adapters.yaml:23:18": "max_message range by type (validate hook)",
    "bad-adapters.yaml:27:15": "protocol by type (validate hook)",
    "bad-adapters.yaml:32:5": "framing with protocol (validate hook)",
    "bad-adapters.yaml:33:5": "command required for exec (validate hook)",
    "bad-adapters.yaml:40:14": "host:port syntax (validate hook)",
    "bad-adapters.yaml:43:13": "port range (validate hook)",
    "bad-adapters.yaml:47:5": "key for clients only (role)",
    "bad-adapters.yaml:51:5": "key for servers only (role)",
    "bad-adapters.yaml:56:22": "backoff above its cap (two keys)",
    "bad-adapters.yaml:60:12": "topic template placeholders",
    "bad-filemap.yaml:5:11": "ring name (validate hook)",
    "bad-filemap.yaml:8:11": "mode bits (validate hook)",
    "bad-filemap.yaml:11:11": "mode syntax (validate hook)",
    "bad-filemap.yaml:14:15": "multiple of 8 (validate hook)",
    "bad-filemap.yaml:17:15": "capacity written with a unit (64KiB): range of unit values",
    "bad-filemap.yaml:21:5": "key for one direction (validate hook)",
    "bad-filemap.yaml:31:18": "capacity against max_message (two keys)",
    "bad-filemap.yaml:34:5": "key for one direction (validate hook)",
    "bad-filemap.yaml:37:28": "SDDL",
    "bad-http.yaml:6:13": "a non-loopback listener needs anonymous (two keys)",
    "bad-http.yaml:8:14": "timeout written with a unit (10ms): range of unit values",
    "bad-transforms.yaml:37:14": "a Lua script file that is missing",
    "bad-transforms.yaml:38:42": "transform step arguments (lua budget)",
    "bad-transforms.yaml:38:53": "transform step arguments (lua memory)",
    "bad-names.yaml:5:11": "unique names",
    "bad-routes.yaml:4:16": "route destinations declared",
    "bad-routes.yaml:4:25": "destination listed twice",
    "bad-routes.yaml:5:11": "unique names",
    "bad-routes.yaml:14:23": "backoff above its cap (two keys)",
    "bad-sddl.yaml:6:35": "SDDL",
    "bad-sddl.yaml:11:28": "SDDL",
    "bad-sddl.yaml:15:31": "SDDL",
    "bad-sddl.yaml:19:34": "SDDL",
    "bad-sddl.yaml:23:26": "SDDL",
    "bad-transforms.yaml:13:16": "step arguments",
    "bad-transforms.yaml:14:17": "step arguments",
    "bad-transforms.yaml:15:16": "step arguments",
    "bad-transforms.yaml:16:40": "step arguments",
    "bad-transforms.yaml:17:35": "step arguments",
    "bad-transforms.yaml:18:15": "step arguments",
    "bad-transforms.yaml:19:35": "step arguments",
    "bad-transforms.yaml:20:9": "destination able to take deliveries",
    "bad-transforms.yaml:26:21": "step arguments",
    "bad-transforms.yaml:29:9": "destination able to take deliveries",
    "bad-transforms.yaml:33:16": "republish needs a transform (two keys)",
    "bad-values.yaml:14:18": "size written with a unit (65MiB): range of unit values",
    "bad-values.yaml:21:12": "duration written with a unit: range of unit values",
    "bad-values.yaml:24:28": "0x10 is an integer to YAML, text to the loader",
}

EXPECTED_LINE = re.compile(r"^([^:]+):(\d+):(\d+): (?:([^ :]+): )?(.*)$")


class Loader(yaml.SafeLoader):
    """YAML as an editor reads it, without timestamps."""


Loader.yaml_implicit_resolvers = {
    k: [r for r in v if r[0] != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load(path):
    with open(path, "rb") as f:
        return yaml.load(f, Loader=Loader)


def key_path(text):
    """'adapters[2].tls.cert' -> ('adapters', 2, 'tls', 'cert')."""
    out = []
    for part in text.split("."):
        m = re.match(r"^([^\[]*)((?:\[\d+\])*)$", part)
        if m.group(1):
            out.append(m.group(1))
        out.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return tuple(out)


def leaves(errors):
    """The errors of the branches of each anyOf that got furthest into the
    value (`to: [{adapter: a, transform: [{bad: 1}]}]` fails the name and
    the list branch: the list branch's error at the step is the one meant)."""
    out = []
    for e in errors:
        if not e.context:
            out.append(e)
            continue
        inner = leaves(e.context)
        for i in inner:
            p = tuple(i.absolute_path)
            if not any(len(o.absolute_path) > len(p) and tuple(o.absolute_path)[: len(p)] == p
                       for o in inner):
                out.append(i)
    return out


def schema_paths(validator, doc):
    """The key paths the schema finds fault with: where the bad value is, or
    for unknown and missing keys, the key's own path."""
    paths = {}
    for e in leaves(validator.iter_errors(doc)):
        base = tuple(e.absolute_path)
        if e.validator == "additionalProperties" and isinstance(e.instance, dict):
            known = e.schema.get("properties", {})
            for k in e.instance:
                if k not in known:
                    paths[base + (k,)] = e.message
        elif e.validator == "required" and isinstance(e.instance, dict):
            for k in e.validator_value:
                if k not in e.instance:
                    paths[base + (k,)] = e.message
        else:
            paths[base] = e.message
    return paths


def covers(schema_path, key):
    """A schema error at a key, or at the list that holds it (an element
    of `from`, which the schema checks as one value)."""
    return schema_path == key or (
        len(schema_path) + 1 == len(key) and key[: len(schema_path)] == schema_path
    )


def check_current(switchboard, schema_file):
    made = subprocess.run([switchboard, "schema"], check=True, capture_output=True).stdout
    with open(schema_file, "rb") as f:
        shipped = f.read()
    if made != shipped:
        print(f"{schema_file} is not what `switchboard schema` prints; regenerate it:\n"
              f"  {switchboard} schema > {schema_file}")
        return 1
    print(f"{schema_file}: current")
    return 0


def check_agree(switchboard, schema_file, examples, bad_dir):
    with open(schema_file) as f:
        schema = __import__("json").load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    failures = []

    for name in sorted(os.listdir(examples)):
        if not name.endswith(".yaml"):
            continue
        path = os.path.join(examples, name)
        with open(path) as f:
            first = f.readline()
        if not first.startswith("# yaml-language-server: $schema=../switchboard.schema.json"):
            failures.append(f"{name}: first line is not the yaml-language-server $schema comment")
        r = subprocess.run([switchboard, "check-config", path], capture_output=True, text=True)
        if r.returncode != 0:
            failures.append(f"{name}: check-config refuses it:\n{r.stderr}")
        for p, msg in sorted(schema_paths(validator, load(path)).items(), key=str):
            failures.append(f"{name}: schema refuses {'.'.join(map(str, p))}: {msg}")
        print(f"{name}: valid")

    seen = set()
    for name in sorted(os.listdir(bad_dir)):
        if not (name.startswith("bad-") and name.endswith(".yaml")):
            continue
        stem = name[:-5]
        with open(os.path.join(bad_dir, stem + ".expected")) as f:
            expected = [EXPECTED_LINE.match(line.rstrip("\n")) for line in f if line.strip()]
        try:
            doc = load(os.path.join(bad_dir, name))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            # the file is not one YAML document: no editor gets as far as
            # the schema, and check-config says why
            print(f"{name}: not YAML ({type(e).__name__}), as check-config says")
            continue
        found = schema_paths(validator, doc)
        keys = []
        for m in expected:
            where = f"{m.group(1)}:{m.group(2)}:{m.group(3)}"
            key = key_path(m.group(4)) if m.group(4) else ()
            keys.append(key)
            if where in NOT_EXPRESSED:
                seen.add(where)
                continue
            if key == ():
                if not found:
                    failures.append(f"{where}: the schema accepts the file ({m.group(5)})")
            elif not any(covers(p, key) for p in found):
                failures.append(f"{where}: {m.group(4)}: the schema does not say {m.group(5)!r}")
        for p, msg in sorted(found.items(), key=str):
            if not any(covers(p, k) or p[: len(k)] == k for k in keys):
                failures.append(f"{name}: schema refuses {'.'.join(map(str, p))}, "
                                f"check-config does not: {msg}")
        print(f"{name}: {len(found)} schema error(s), {len(expected)} from check-config")

    for where in sorted(set(NOT_EXPRESSED) - seen):
        failures.append(f"{where}: in NOT_EXPRESSED but no longer in its .expected file")
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


def main(argv):
    if len(argv) == 4 and argv[1] == "current":
        return check_current(argv[2], argv[3])
    if len(argv) == 6 and argv[1] == "agree":
        return check_agree(*argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
