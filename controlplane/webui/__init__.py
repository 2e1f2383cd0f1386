"""The browser front end: sign-in, the dashboard, the terminal page and the app proxy."""
