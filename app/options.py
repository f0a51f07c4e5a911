"""Widget options shared by the pages, tests and tools (no Streamlit import: tools read them without a runtime)."""

#: Options of the sex radio; the index of a sex is int(male).
SEXES = ("Female", "Male")
#: Options of the chronological-age radio: none, years + months, or two dates.
AGE_MODES = ("Not given", "Years and months", "Date of birth and study date")

#: Session-state key of the current patient (the upload's digest): the patient inputs' widget keys end with it.
PATIENT_STATE = "assess_patient"
#: The patient's inputs on the Assess page (base keys). Each widget key is new for every film
#: (:func:`patient_key`), so a browser cannot carry one child's sex, age or dates over to the next.
SEX, AGE_MODE, AGE_YEARS, AGE_MONTHS, BIRTH_DATE, STUDY_DATE, PATIENT_ID, ACCESSION = (
    "assess_sex", "assess_age_mode", "assess_age_years", "assess_age_months", "assess_birth_date",
    "assess_study_date", "assess_patient_id", "assess_accession")
#: The reader (the clinician) stays from one child to the next.
READER = "assess_reader"


def patient_key(name: str, patient: str) -> str:
    """The widget key of a patient input (`name`, a base key above) for the patient of one film."""
    return f"{name}__{patient}"
