"""Re-renders tests/Tessera.Tests/Models/Chat/Data/chat_templates.json with transformers and rewrites each 'expected'.

Run where transformers is installed (the GPU machine has it; no network or model download is needed):
    python3 scripts/golden/make_chat_templates.py [--check]
--check prints a mismatch per case and exits 1 instead of rewriting, so the committed strings can be verified.
"""
import json
import pathlib
import sys

from transformers.utils.chat_template_utils import render_jinja_template  # transformers >= 4.48

path = pathlib.Path(__file__).resolve().parents[2] / "tests/Tessera.Tests/Models/Chat/Data/chat_templates.json"
doc = json.loads(path.read_text())
check = "--check" in sys.argv
bad = 0
for case in doc["cases"]:
    messages = doc["messages"] if case["system"] else doc["messages"][1:]
    rendered, _ = render_jinja_template(conversations=[messages], chat_template=case["template"], add_generation_prompt=True,
                                        bos_token=case["bos_token"] or "", eos_token=case["eos_token"] or "")
    text = rendered[0]
    if text != case["expected"]:
        bad += 1
        print(f"MISMATCH {case['name']}:\n  expected {case['expected']!r}\n  transformers {text!r}")
    case["expected"] = text
if check:
    print(f"{len(doc['cases']) - bad} of {len(doc['cases'])} chat-template cases match transformers")
    sys.exit(1 if bad else 0)
path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
print(f"wrote {path} ({bad} changed)")
