require ["regex", "variables", "fileinto", "mailbox"];
if header :regex "subject" "([0-9]{7})" { fileinto :create "Orders/${1}"; }
if address :regex :domain "from" "^(.*)\\.example\\.(org|net)$" { set "site" "${1}"; }
if string :regex "${site}" "^[[:alpha:]-]+$" { fileinto :create "Sites/${site}"; }
if header :regex :comparator "i;octet" "subject" "^Re: " { fileinto "Work"; }
if header :regex "from" "^[^<]*<news" { fileinto "Lists"; }
