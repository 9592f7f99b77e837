# A student's conftest.py. The grader copies only .ipynb files, so pytest never sees this file;
# if it did, pytest would stop here and the student would get no records (0 points).
raise SystemExit("a student's conftest.py was loaded by the grader")
