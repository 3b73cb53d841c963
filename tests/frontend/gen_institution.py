"""A large institution file for the dashboard's first-screen benchmark: 2,000 units, 20,000 students.

Written as JSON (which is YAML) so a 5 MB file is produced in a fraction of a second. The shape is a
real university's: colleges, departments, a teaching pool and a research unit per department,
courses with a member cap, grants with chargeback codes on research units, and some departments
deliberately over-allocated so the tree has warnings to show.

    python -m tests.frontend.gen_institution OUT.yaml [--units 2000] [--students 20000] [--id bigu]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any


def generate(
    units: int = 2000, students: int = 20000, inst_id: str = "bigu", seed: int = 7
) -> dict[str, Any]:
    """The institution document; `units` counts every unit including the root."""
    rng = random.Random(seed)
    colleges, depts_per_college = 10, 10
    fixed = (
        1 + colleges + colleges * depts_per_college + 2 * colleges * depts_per_college
    )  # teaching + research
    courses_total = units - fixed
    if courses_total < colleges * depts_per_college:
        raise ValueError(f"need at least {fixed + colleges * depts_per_college} units")
    users: list[dict[str, str]] = []
    course_ids: list[str] = []
    college_nodes: list[dict[str, Any]] = []
    admin_users = ["inst-admin", "inst-finance"]
    course_no = 0
    for c in range(colleges):
        dept_nodes: list[dict[str, Any]] = []
        for d in range(depts_per_college):
            dept_index = c * depts_per_college + d
            left = courses_total - course_no
            depts_left = colleges * depts_per_college - dept_index
            n_courses = left // depts_left
            dept_id = f"c{c:02d}-d{d:02d}"
            courses: list[dict[str, Any]] = []
            for _ in range(n_courses):
                cid = f"{dept_id}-k{course_no:04d}"
                course_ids.append(cid)
                courses.append({"id": cid, "kind": "course", "name": f"Course {course_no:04d}",
                                "budget": {"cost": {"fixed": rng.choice([200, 300, 500])}},
                                "member_cap": {"cost": {"fixed": 10}}})  # fmt: skip
                course_no += 1
            dept_admin = f"admin-{dept_id}"
            admin_users.append(dept_admin)
            # every seventh department hands out more than its own cap: a warning for the tree to show
            research = 4000 if dept_index % 7 == 0 else 1000
            dept_nodes.append({
                "id": dept_id, "kind": "department", "name": f"Department {c}.{d}",
                "budget": {"cost": {"fixed": 8000}}, "admins": [dept_admin],
                "children": [
                    {"id": f"{dept_id}-teach", "kind": "teaching", "budget": {"cost": {"percent": 60}},
                     "children": courses},
                    {"id": f"{dept_id}-research", "kind": "research", "budget": {"cost": {"fixed": research}},
                     "extras": [{"id": f"grant-{dept_id}", "cost": 500, "valid_from": "2026-01-01",
                                 "valid_to": "2027-12-31", "chargeback": f"GR-{dept_index:04d}"}]},
                ],
            })  # fmt: skip
        college_nodes.append({"id": f"c{c:02d}", "kind": "college", "name": f"College {c}",
                              "budget": {"cost": {"percent": 10}}, "children": dept_nodes})  # fmt: skip
    members: dict[str, list[dict[str, str]]] = {cid: [] for cid in course_ids}
    for s in range(students):
        uid = f"s{s:05d}"
        users.append({"id": uid, "email": f"{uid}@{inst_id}.example", "name": f"Student {s:05d}",
                      "sso_subject": f"{uid}@{inst_id}.example"})  # fmt: skip
        for cid in rng.sample(course_ids, k=rng.choice([1, 2, 2, 3])):
            members[cid].append({"user": uid, "role": "student"})
    for college in college_nodes:
        for dept in college["children"]:
            for course in dept["children"][0]["children"]:
                course["members"] = members[course["id"]]
    for uid in admin_users:
        users.append({"id": uid, "email": f"{uid}@{inst_id}.example", "name": uid.replace("-", " ").title(),
                      "sso_subject": f"{uid}@{inst_id}.example"})  # fmt: skip
    root = {"id": inst_id, "kind": "university", "name": "Big State University",
            "budget": {"period": "month", "cost": {"fixed": 1_000_000}}, "models": ["demo-chat"],
            "admins": ["inst-admin"], "finance": ["inst-finance"], "children": college_nodes}  # fmt: skip
    return {
        "institution": {"id": inst_id, "name": "Big State University", "currency": "USD",
                        "timezone": "America/Chicago"},
        "providers": [{"id": "demo", "type": "openai-compatible", "base_url": "http://127.0.0.1:8001/v1",
                       "models": [{"id": "demo-chat", "upstream": "demo-chat", "max_output_tokens": 1024,
                                   "price": {"input_per_mtok": 0.5, "output_per_mtok": 1.5}}]}],
        "units": [root],
        "users": users,
    }  # fmt: skip


def count_units(doc: dict[str, Any]) -> int:
    stack = list(doc["units"])
    n = 0
    while stack:
        u = stack.pop()
        n += 1
        stack.extend(u.get("children", []))
    return n


def write(path: Path, units: int = 2000, students: int = 20000, inst_id: str = "bigu") -> dict[str, Any]:
    doc = generate(units, students, inst_id)
    path.write_text(json.dumps(doc, separators=(",", ":")))
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--units", type=int, default=2000)
    parser.add_argument("--students", type=int, default=20000)
    parser.add_argument("--id", default="bigu")
    args = parser.parse_args()
    doc = write(args.out, args.units, args.students, args.id)
    print(f"{args.out}: {count_units(doc)} units, {args.students} students")


if __name__ == "__main__":
    main()
