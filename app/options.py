"""Widget options shared by the pages, tests and tools (no Streamlit import: tools read them without a runtime)."""

#: Options of the sex radio; the index of a sex is int(male).
SEXES = ("Female", "Male")
#: Options of the chronological-age radio: none, years + months, or two dates.
AGE_MODES = ("Not given", "Years and months", "Date of birth and study date")
