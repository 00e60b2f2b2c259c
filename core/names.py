"""What a valid object name, model version id and job id are: one pattern each, for every module.

Object names and version ids become directory names and metric labels, so the patterns admit
nothing that can leave a folder or break a line. Checks use `fullmatch`: `re.match` with `$`
accepts a trailing newline.
"""

from __future__ import annotations

import re

OBJECT_NAME = r"[a-z0-9][a-z0-9_-]{0,63}"
VERSION_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
JOB_ID = r"[A-Za-z0-9_-]{1,64}"  # also the enrolment id (a folder name under samples/<object>/)
# An inspection's request id: ours, or the client's X-Request-ID when it is a plain token; also a
# file name in the decision log's image store and the feedback store.
REQUEST_ID = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
# Anchored forms for OpenAPI / pydantic `pattern=` constraints (which search, not match).
OBJECT_NAME_ANCHORED = f"^{OBJECT_NAME}$"
VERSION_NAME_ANCHORED = f"^{VERSION_NAME}$"
JOB_ID_ANCHORED = f"^{JOB_ID}$"
REQUEST_ID_ANCHORED = f"^{REQUEST_ID}$"


def is_object_name(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(OBJECT_NAME, value) is not None


def is_version_name(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(VERSION_NAME, value) is not None and ".." not in value


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(JOB_ID, value) is not None


def is_request_id(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(REQUEST_ID, value) is not None
