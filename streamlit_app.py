"""Entry point of the bone-age app: `streamlit run streamlit_app.py` (pages in app/pages, state in app.state)."""

from __future__ import annotations

import logging

import streamlit as st

from boneage_core.report import DISCLAIMER

logger = logging.getLogger(__name__)

st.set_page_config(page_title="Bone age", page_icon="🦴", layout="wide")

#: (file under app/pages, title, icon, url path); the first is the default page.
PAGES = (
    ("assess", "Assess a radiograph", ":material/radiology:"),
    ("batch", "Batch", ":material/folder_copy:"),
    ("performance", "Model performance", ":material/monitoring:"),
    ("bias", "Subgroups and bias", ":material/balance:"),
    ("about", "About", ":material/info:"),
)

navigation = st.navigation([st.Page(f"app/pages/{name}.py", title=title, icon=icon, url_path=name, default=i == 0)
                            for i, (name, title, icon) in enumerate(PAGES)])
with st.sidebar:
    st.caption(f"**{DISCLAIMER}**")
navigation.run()
