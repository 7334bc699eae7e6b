require ["fileinto", "mailbox"];
if mailboxexists "Lists" { if exists "List-Id" { fileinto "Lists"; } }
if mailboxexists ["Nowhere", "Lists"] { fileinto "Junk"; }
if address :domain :is "from" "example.org" { fileinto :create "Created/Org"; }
if not mailboxexists "Created/Org" { fileinto :create "Fresh"; }
