require ["imap4flags", "fileinto"];
if exists "List-Id" { addflag "$Newsletter"; }
if header :contains "precedence" "bulk" { addflag ["\\Seen", "$Bulk"]; }
if hasflag :contains "bulk" { fileinto "Lists"; }
removeflag "$Newsletter";
if header :contains "subject" "order" { setflag "\\Flagged"; addflag "$Order \\Answered"; }
if hasflag :is "\\flagged" { fileinto :flags ["\\Flagged", "$Shop"] "Shop"; }
if header :contains "subject" "Re:" { keep :flags "\\Answered"; }
