require "fileinto";
if address :domain :is "from" "example.net" { fileinto "Shop"; }
if address :localpart :contains ["from", "sender"] "order" { fileinto "Work"; }
if address :all :matches "to" "alice@*.org" { fileinto "Family"; }
if address :is ["cc", "bcc", "reply-to"] "bob@example.org" { fileinto "Misc"; }
if address :localpart :is "from" ["zoe.garnier", "ned.martin"] { fileinto "Family"; }
if address :domain :matches "from" "*.example.?et" { fileinto "Lists"; }
if not address :all :contains "from" "@" { fileinto "Junk"; }
