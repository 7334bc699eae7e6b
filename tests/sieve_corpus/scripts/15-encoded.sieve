require ["encoded-character", "fileinto", "variables"];
if header :contains "subject" "${unicode:1F331}" { fileinto "Lists"; }
if header :contains "from" "M${hex:C3 BC}ller" { fileinto "Family"; }
if header :contains "subject" "${hex:e6 b3 a8}${unicode:6587}" { fileinto "Shop"; }
set "bad" "${hex:zz}";
if string :is "${bad}" "${hex:zz}" { fileinto "Encoded"; }
