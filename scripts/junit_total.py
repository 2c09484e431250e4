"""Adds up pytest's JUnit XML reports (one per backend) into one closing line."""

import sys
import xml.etree.ElementTree as ET

passed = failed = skipped = 0
for path in sys.argv[1:]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        print(f"no report at {path}: that backend's run did not finish")
        failed += 1
        continue
    for suite in root.iter("testsuite"):
        tests, errors = int(suite.get("tests", 0)), int(suite.get("errors", 0))
        fails, skips = int(suite.get("failures", 0)), int(suite.get("skipped", 0))
        failed += fails + errors
        skipped += skips
        passed += tests - fails - errors - skips
print(f"total: {passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
