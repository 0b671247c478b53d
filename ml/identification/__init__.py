"""Identification: who sings a recording outside the training data (embedding back-ends,
enrolment of new singers, the open-set rule)."""
