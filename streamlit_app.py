"""Entry point of the bone-age clinical dashboard: `streamlit run streamlit_app.py`."""

from __future__ import annotations

import logging

import streamlit as st

import dashboard

logger = logging.getLogger(__name__)

st.set_page_config(page_title="Bone age", page_icon="🦴", layout="wide")

pages = [
    st.Page("app_pages/assess.py", title="Assess a radiograph", icon=":material/radiology:", url_path="assess", default=True),
    st.Page("app_pages/batch.py", title="Batch", icon=":material/folder_copy:", url_path="batch"),
    st.Page("app_pages/performance.py", title="Model performance", icon=":material/monitoring:", url_path="performance"),
    st.Page("app_pages/bias.py", title="Subgroups and bias", icon=":material/balance:", url_path="bias"),
    st.Page("app_pages/about.py", title="About", icon=":material/info:", url_path="about"),
]
navigation = st.navigation(pages)
with st.sidebar:
    st.caption(f"**{dashboard.DISCLAIMER}**")
navigation.run()
