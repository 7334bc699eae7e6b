require ["body", "fileinto"];
if body :contains "allotments" { fileinto "Lists"; }
if body :text :contains ["Rechnung", "invoice"] { fileinto "Shop"; }
if body :raw :contains "base64" { fileinto "Archive"; }
if body :content "text/html" :contains "<p" { fileinto "Misc"; }
if body :content "text/plain" :contains "Fromage" { fileinto "Family"; }
if body :content "image" :contains "PNG" { fileinto "Junk"; }
if body :raw :contains "=C3=BC" { fileinto "Work"; }
