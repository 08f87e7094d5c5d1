"""Small apps per framework, importable by child-process servers, and what their tests share."""
