import "@xterm/xterm/css/xterm.css";
