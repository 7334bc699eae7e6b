require ["date", "relational", "fileinto", "comparator-i;ascii-numeric"];
if date :value "ge" :originalzone "date" "hour" "12" { fileinto "Work"; }
if date :zone "+0900" :value "lt" "date" "hour" "09" { fileinto "Family"; }
if date :is :zone "-0500" "date" "weekday" ["0", "6"] { fileinto "Archive"; }
if date :is :originalzone "date" "zone" "+0100" { fileinto "Misc"; }
if date :matches "date" "date" "2024-03-0*" { fileinto "Lists"; }
if date :value "lt" :comparator "i;ascii-numeric" "date" "julian" "60400" { fileinto "Shop"; }
if date :is :zone "+0000" "date" "iso8601" "2024-03-04T07:30:00+00:00" { fileinto "Junk"; }
if date :contains :originalzone "date" "time" ":00" { fileinto "Dated"; }
if currentdate :value "ge" :comparator "i;ascii-numeric" "year" "2020" { keep; }
if date :value "gt" "received" "date" "2024-03-10" { fileinto "Body"; }
