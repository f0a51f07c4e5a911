"""The Streamlit front end (`streamlit run streamlit_app.py`): cached loaders and session state in app.state, pages in app/pages."""
