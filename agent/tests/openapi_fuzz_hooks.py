"""Schemathesis hooks for tests/openapi_fuzz.rs.

Blueprints are YAML 1.2, as the agent reads them; schemathesis writes YAML bodies with
PyYAML, which follows YAML 1.1. The two disagree on some plain scalars: `1e+100` or
`0o17` are strings in YAML 1.1 (so PyYAML writes them unquoted) and numbers in YAML 1.2.
This writer quotes every string that YAML 1.2's core schema would read as anything but
a string, so that the agent receives the data the fuzzer generated.
"""

import re

import schemathesis
import yaml

# The plain scalars of YAML 1.2's core schema that are not strings (spec 10.3.2).
CORE_SCHEMA_NON_STRING = re.compile(
    r"""^(?:
        null|Null|NULL|~|
        true|True|TRUE|false|False|FALSE|
        [-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+|
        [-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|
        [-+]?\.(?:inf|Inf|INF)|\.nan|\.NaN|\.NAN
    )$""",
    re.X,
)


class Yaml12Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper, value):
    style = "'" if CORE_SCHEMA_NON_STRING.match(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


Yaml12Dumper.add_representer(str, _represent_str)


@schemathesis.serializer("application/x-yaml")
def yaml_1_2(ctx, value):
    if isinstance(value, bytes):
        return value
    return yaml.dump(value, Dumper=Yaml12Dumper).encode()
