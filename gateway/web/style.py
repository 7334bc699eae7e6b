"""The page's one style sheet, served as ``/static/style.css`` (no inline styles, so the
Content-Security-Policy can forbid them; no fonts or files from elsewhere, so the page
works offline). One column under 600 px, cards side by side above; dark when the
system is; every state also written in words, so nothing depends on colour alone.
"""

STYLE_CSS = """
:root {
  --bg: #f4f5f7; --card: #fff; --ink: #1d2330; --muted: #5b6475; --line: #dde1e8;
  --ok: #1f7a3f; --bad: #b3261e; --busy: #1f5fae; --idle: #6b7280; --accent: #2f5bd3;
  --bar: #2f5bd3; --area: rgba(47, 91, 211, .15);
}
@media (prefers-color-scheme: dark) {
  :root { --bg: #12151b; --card: #1b2029; --ink: #e7eaf0; --muted: #9aa3b2; --line: #2c3340;
          --ok: #5cc280; --bad: #f2827a; --busy: #7fb0f5; --idle: #a0a7b4; --accent: #7fa2f5;
          --bar: #7fa2f5; --area: rgba(127, 162, 245, .2); }
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header.top { display: flex; align-items: center; gap: 1rem; flex-wrap: wrap;
             padding: .75rem 1.25rem; background: var(--card);
             border-bottom: 1px solid var(--line); }
header.top h1 { font-size: 1.2rem; margin: 0; }
header.top h1 span { color: var(--muted); font-weight: normal; }
header.top .who { margin-left: auto; color: var(--muted); }
header.top form { margin: 0; }
main { max-width: 1200px; margin: 0 auto; padding: 1rem 1.25rem 2rem; }
h2 { font-size: 1.05rem; margin: 1.5rem 0 .6rem; color: var(--muted);
     text-transform: uppercase; letter-spacing: .04em; }
.cards { display: grid; gap: 1rem;
         grid-template-columns: repeat(auto-fill, minmax(min(100%, 540px), 1fr)); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
        padding: 1rem 1.1rem; min-width: 0; border-left-width: 6px; }
.card.state-ok { border-left-color: var(--ok); }
.card.state-failing { border-left-color: var(--bad); }
.card.state-fetching { border-left-color: var(--busy); }
.card.state-waiting, .card.owner { border-left-color: var(--idle); }
.card-head { display: flex; align-items: baseline; gap: .6rem; flex-wrap: wrap; }
.card-head h3 { margin: 0; font-size: 1.15rem; overflow-wrap: anywhere; }
.badge { font-weight: 600; font-size: .9rem; padding: .1rem .55rem; border-radius: 999px;
         border: 1.5px solid currentColor; white-space: nowrap; }
.badge.ok { color: var(--ok); } .badge.failing { color: var(--bad); }
.badge.fetching { color: var(--busy); } .badge.waiting { color: var(--idle); }
.where { margin: .2rem 0 .6rem; color: var(--muted); overflow-wrap: anywhere; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .25rem .9rem;
           margin: 0 0 .6rem; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
dd.error { color: var(--bad); font-weight: 600; }
.numbers { display: grid; grid-template-columns: repeat(3, 1fr); gap: .5rem; margin: 0 0 .6rem; }
.numbers div { background: var(--bg); border-radius: 8px; padding: .45rem .6rem; }
.numbers b { display: block; font-size: 1.35rem; }
.numbers span { display: block; color: var(--muted); font-size: .85rem; line-height: 1.3; }
.numbers-head { margin: .7rem 0 .3rem; font-weight: 600; font-size: .9rem; }
figure { margin: .4rem 0 .6rem; }
figcaption { color: var(--muted); font-size: .85rem; }
svg.chart { width: 100%; height: auto; display: block; }
svg .grid { stroke: var(--line); stroke-width: 1; }
svg .tick { stroke: var(--line); stroke-dasharray: 2 3; }
svg .axis, svg .note { fill: var(--muted); font-size: 12px; font-family: system-ui, sans-serif; }
svg .note { font-size: 13px; }
svg .bar { fill: var(--bar); }
svg .line { fill: none; stroke: var(--bar); stroke-width: 2; }
svg .area { fill: var(--area); }
svg.quota { width: 100%; height: 12px; display: block; border-radius: 6px; }
svg.quota .track { fill: var(--line); }
svg.quota .fill { fill: var(--ok); }
svg.quota .fill.high { fill: #c77700; } svg.quota .fill.full { fill: var(--bad); }
button { font: inherit; padding: .45rem 1rem; border-radius: 8px; border: 1px solid var(--accent);
         background: var(--accent); color: #fff; cursor: pointer; }
button.quiet { background: transparent; color: var(--accent); }
button:focus-visible, input:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.actions { display: flex; gap: .6rem; align-items: center; flex-wrap: wrap; }
.actions form { margin: 0; }
code { background: var(--bg); padding: .1rem .3rem; border-radius: 4px; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; font-size: .92rem; }
th, td { text-align: left; padding: .3rem .4rem; border-bottom: 1px solid var(--line); }
th.n, td.n { text-align: right; font-variant-numeric: tabular-nums; }
td { overflow-wrap: anywhere; }
.notice { background: var(--card); border: 1px solid var(--accent); border-radius: 8px;
          padding: .6rem .9rem; margin: 0 0 1rem; }
.notice.bad { border-color: var(--bad); }
.muted { color: var(--muted); }
footer { color: var(--muted); font-size: .85rem; text-align: center; padding: 1rem; }
footer a { color: var(--accent); }
.signin { max-width: 380px; margin: 12vh auto; }
.signin label { display: block; margin: .7rem 0 .2rem; }
.signin input { width: 100%; font: inherit; padding: .5rem .6rem; border-radius: 8px;
                border: 1px solid var(--line); background: var(--bg); color: var(--ink); }
.signin button { margin-top: 1rem; width: 100%; }
@media (max-width: 600px) {
  body { font-size: 16px; }
  main { padding: .75rem; }
  header.top { padding: .6rem .75rem; }
  header.top .who { margin-left: 0; width: 100%; order: 3; }
  .cards { grid-template-columns: 1fr; }
  .numbers b { font-size: 1.15rem; }
  dl.facts { grid-template-columns: 1fr; gap: 0; }
  dl.facts dd { margin-bottom: .35rem; }
  svg .axis { font-size: 16px; }  /* the chart is drawn at about two thirds of its size */
}
"""
"""The whole style sheet."""
