require ["fileinto", "variables"];
set "greeting" text: # a comment after text:
Hello
..dot-stuffed line
.
;
if string :contains "${greeting}" ".dot" { if header :contains "subject" "e" { fileinto "Vars"; } }
if header :contains "subject" text:
Order
.
{ fileinto "Shop"; }
