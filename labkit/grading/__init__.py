"""Exercises, student versions and grading: one subpackage, data going one way.

Student side (what a learner and `make test` use):
    labkit.check          `check(...)`, `@exercise`, `@validator` and the shared slips (kept at labkit/check.py:
                          every topic module imports them from there)
    convention            the `### BEGIN SOLUTION` convention and `student_version`
    paired                `paired_version` and `solution_leaks`: each exercise as the student gets it, then solved
    self_grade            `grade(path)`: a learner runs and grades their own notebook

Grader side (`labkit grade SUBMISSIONS --master NOTEBOOKS`), in the order data flows:
    intake    the student folders and each student's copy of a notebook, read safely
    rebuild   the cells to run, rebuilt from the master (check cells become recording cells)
    sandbox   where a run happens (bubblewrap, or nothing), and seal: the labkit it runs with
    runner    runs the cells inside the sandbox and reports what happened
    records   the answers a run recorded, read back
    decide    pass or fail, decided in the grader's process
    job       those steps for one student and one notebook, never raising
    classrun  every job, each contained in a process of its own, in shards if asked
    report    CSV, JUnit, Markdown and feedback files, escaped
"""

from .convention import BEGIN, END, exercise_ids, strip_solutions, student_version
from .paired import expect_check_failure, paired_version, solution_leaks
from .self_grade import GradeReport, execute, grade, grade_executed

__all__ = ["BEGIN", "END", "GradeReport", "exercise_ids", "execute", "expect_check_failure", "grade",
           "grade_executed", "paired_version", "solution_leaks", "strip_solutions", "student_version"]
